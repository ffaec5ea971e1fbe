"""The local stack: a queen and a hive started in the background by `rbee up`.

Each daemon gets its own session (it outlives the terminal), its output goes to
`<RBEE_HOME>/logs/<name>.log` and its pid to `<RBEE_HOME>/run/<name>.pid`. Starting is
idempotent: a daemon that already answers `/health` is left alone. `rbee down` asks the
queen for a cascading shutdown and then makes sure every pid it started is gone.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from rbee_keeper.context import Context


class StackError(RuntimeError):
    """The local stack could not be started or stopped; the message says what to do."""


@dataclass(frozen=True)
class Daemon:
    name: str  # "queen" or "hive"
    command: str
    url: str
    args: tuple[str, ...]

    def pid_file(self, home: Path) -> Path:
        return home / "run" / f"{self.name}.pid"

    def log_file(self, home: Path) -> Path:
        return home / "logs" / f"{self.name}.log"


def local_daemons(ctx: Context, hive_port: int) -> list[Daemon]:
    host, port = ctx.queen_host, ctx.queen_port
    data_dir = str(ctx.home)
    queen = Daemon(
        "queen",
        "queen-rbee",
        ctx.queen_url.rstrip("/"),
        ("--host", host, "--port", str(port), "--data-dir", data_dir),
    )
    hive = Daemon(
        "hive",
        "rbee-hive",
        f"http://{host}:{hive_port}",
        (
            "--host",
            host,
            "--port",
            str(hive_port),
            "--data-dir",
            data_dir,
            "--queen-url",
            ctx.queen_url.rstrip("/"),
        ),
    )
    return [queen, hive]


def healthy(url: str) -> bool:
    try:
        return httpx.get(url + "/health", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def _executable(command: str) -> str:
    beside = Path(sys.executable).parent / command
    return str(beside) if beside.exists() else command


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return True


def start(daemon: Daemon, home: Path) -> int:
    daemon.log_file(home).parent.mkdir(parents=True, exist_ok=True)
    daemon.pid_file(home).parent.mkdir(parents=True, exist_ok=True)
    with open(daemon.log_file(home), "ab") as log:
        proc = subprocess.Popen(
            [_executable(daemon.command), *daemon.args],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    daemon.pid_file(home).write_text(f"{proc.pid}\n")
    return proc.pid


def wait_healthy(daemon: Daemon, home: Path, pid: int | None, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if healthy(daemon.url):
            return
        if pid is not None and not alive(pid):
            raise StackError(f"{daemon.command} exited during start; see {daemon.log_file(home)}")
        time.sleep(0.1)
    raise StackError(
        f"{daemon.command} did not become healthy in {timeout:.0f} s; see {daemon.log_file(home)}"
    )


def up(ctx: Context, hive_port: int) -> list[tuple[Daemon, bool]]:
    """Start what is not running; returns each daemon and whether it was started now."""
    if not ctx.queen_is_local:
        raise StackError(
            f"The queen at {ctx.queen_url} is not local; rbee starts daemons "
            "on this machine only (use --queen-url http://127.0.0.1:PORT)."
        )
    results = []
    for daemon in local_daemons(ctx, hive_port):
        if healthy(daemon.url):
            results.append((daemon, False))
            continue
        pid = start(daemon, ctx.home)
        wait_healthy(daemon, ctx.home, pid)
        results.append((daemon, True))
    return results


def started_pids(ctx: Context, hive_port: int) -> list[int]:
    pids = [_read_pid(d.pid_file(ctx.home)) for d in local_daemons(ctx, hive_port)]
    return [p for p in pids if p is not None and alive(p)]


def reap(ctx: Context, hive_port: int, timeout: float = 40.0) -> None:
    """Wait for the daemons `up` started to exit; force the ones that do not."""
    deadline = time.monotonic() + timeout
    while started_pids(ctx, hive_port) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in started_pids(ctx, hive_port):
        os.kill(pid, signal.SIGKILL)
    for daemon in local_daemons(ctx, hive_port):
        daemon.pid_file(ctx.home).unlink(missing_ok=True)


def terminate(ctx: Context, hive_port: int) -> None:
    """SIGTERM to the daemons `up` started: for when the queen does not answer."""
    for pid in started_pids(ctx, hive_port):
        os.kill(pid, signal.SIGTERM)
