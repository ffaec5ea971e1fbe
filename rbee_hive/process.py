"""Handles on worker processes: our own children, and workers adopted from an earlier hive.

A child is watched through `asyncio.subprocess.Process.wait()`, which returns as soon as
the child exits (SIGCHLD), so a crash is seen at once. An adopted worker is not our child
(its parent died; init reaped it), so its exit is seen by polling the pid every
`poll_s`, well inside the 2 s the spec allows.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from pathlib import Path
from typing import Protocol

import psutil

ADOPTED_POLL_S = 0.5


def pid_alive(pid: int) -> bool:
    try:
        status: str = psutil.Process(pid).status()
    except psutil.Error:
        return False
    return bool(status != psutil.STATUS_ZOMBIE)


def is_worker_process(pid: int, worker_id: str) -> bool:
    """True only for a live llm-worker-rbee with this id (a pid may have been reused)."""
    try:
        cmdline = psutil.Process(pid).cmdline()
    except psutil.Error:
        return False
    return "--worker-id" in cmdline and worker_id in cmdline


def port_free(host: str, port: int) -> bool:
    """Whether something already listens on `port` (TIME_WAIT leftovers do not count)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


class WorkerProcess(Protocol):
    @property
    def pid(self) -> int: ...

    async def wait(self) -> int | None:
        """The exit status (None when unknown, as for an adopted process)."""
        ...

    def send(self, sig: signal.Signals) -> None: ...


class ChildProcess:
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self._process = process

    @property
    def pid(self) -> int:
        return self._process.pid

    async def wait(self) -> int | None:
        return await self._process.wait()

    def send(self, sig: signal.Signals) -> None:
        if self._process.returncode is None:
            try:
                self._process.send_signal(sig)
            except ProcessLookupError:
                pass


class AdoptedProcess:
    def __init__(self, pid: int, poll_s: float = ADOPTED_POLL_S) -> None:
        self._pid = pid
        self._poll_s = poll_s

    @property
    def pid(self) -> int:
        return self._pid

    async def wait(self) -> int | None:
        while pid_alive(self._pid):  # noqa: ASYNC110 - no event exists for a foreign pid
            await asyncio.sleep(self._poll_s)
        return None

    def send(self, sig: signal.Signals) -> None:
        try:
            os.kill(self._pid, sig)
        except ProcessLookupError:
            pass


async def start_worker(
    command: str, args: list[str], env: dict[str, str], log_path: Path
) -> ChildProcess:
    """Start a worker with its output appended to its log file (never a pipe we own)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        process = await asyncio.create_subprocess_exec(
            command,
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
        )
    return ChildProcess(process)
