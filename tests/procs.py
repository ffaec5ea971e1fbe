"""Real processes for integration tests: start, wait until healthy, always clean up.

`Processes` tracks every process a test starts (in its own process group, so children
such as a hive's workers die with it) and kills what is left at teardown, also when the
test failed. Waiting is polling with a deadline, never a fixed sleep.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(
    condition: Callable[[], object],
    *,
    timeout: float = 10.0,
    interval: float = 0.02,
    what: str = "condition",
) -> object:
    """Poll `condition` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            result = condition()
            if result:
                return result
        except Exception as exc:
            last_error = exc
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what} (last error: {last_error})")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is dead for our purposes
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


@dataclass
class Service:
    """A started command; `url` is set for HTTP services."""

    proc: subprocess.Popen[bytes]
    log_path: Path
    url: str = ""
    argv: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait_exit(self, timeout: float = 30.0) -> int:
        return self.proc.wait(timeout=timeout)

    def wait_healthy(
        self, timeout: float = 30.0, path: str = "/health", token: str | None = None
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}

        def healthy() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"process exited {self.proc.returncode}:\n{self.log()[-3000:]}"
                )
            return httpx.get(self.url + path, headers=headers, timeout=1.0).status_code == 200

        try:
            wait_until(healthy, timeout=timeout, what=f"{self.url}{path}")
        except TimeoutError as exc:
            raise AssertionError(f"{exc}\n{self.log()[-3000:]}") from None


class Processes:
    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[Service] = []

    def start(
        self,
        command: str,
        args: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        url: str = "",
        name: str | None = None,
    ) -> Service:
        executable = VENV_BIN / command
        argv = [str(executable), *args]
        log_path = self.log_dir / f"{name or command}-{len(self.started)}.log"
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, env=full_env, start_new_session=True
            )
        service = Service(proc, log_path, url, argv)
        self.started.append(service)
        return service

    def cleanup(self) -> None:
        for service in reversed(self.started):
            _kill_group(service.proc)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        pgid = os.getpgid(proc.pid)
    except ProcessLookupError:
        pgid = None
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    if pgid is not None:
        try:
            os.killpg(pgid, signal.SIGKILL)  # anything it left in its group
        except (ProcessLookupError, PermissionError):
            pass
