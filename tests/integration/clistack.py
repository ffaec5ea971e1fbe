"""The `rbee` command run as a user runs it, against a local stack in a private RBEE_HOME.

`Cli` runs the command as a subprocess with its own RBEE_HOME, queen URL and hive port;
`cli_stack` tears down whatever the test left: `rbee down`, then SIGKILL for any process
of the stack still alive. `stack_processes` finds those processes by their command line
(the RBEE_HOME or the stack's ports), not by remembered pids, so it also sees workers.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psutil

from tests.procs import free_port, pid_alive

RBEE = str(Path(sys.executable).parent / "rbee")


@dataclass
class Cli:
    home: Path
    queen_url: str
    hive_port: int
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def queen_port(self) -> int:
        return urlsplit(self.queen_url).port or 8080

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "RBEE_HOME": str(self.home),
            "RBEE_QUEEN_URL": self.queen_url,
            "RBEE_HIVE_PORT": str(self.hive_port),
            "PYTHONUNBUFFERED": "1",
            "RBEE_HIVE_HEARTBEAT_INTERVAL_S": "0.5",
            **self.extra_env,
        }

    def run(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [RBEE, *args],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def ok(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        result = self.run(*args, timeout=timeout)
        assert result.returncode == 0, (args, result.stdout, result.stderr)
        return result

    def popen(self, *args: str, stdin: int = subprocess.DEVNULL) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [RBEE, *args],
            env=self.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            stdin=stdin,
        )

    def json(self, *args: str) -> Any:
        return json.loads(self.ok(*args, "--json").stdout)

    def daemon_pids(self) -> dict[str, int]:
        pids = {}
        for pid_file in (self.home / "run").glob("*.pid"):
            try:
                pids[pid_file.stem] = int(pid_file.read_text())
            except (OSError, ValueError):
                pass
        return pids


def stack_processes(cli: Cli) -> dict[int, str]:
    """Every live process of this stack: pid -> command line. A process belongs to the
    stack when its command line names the stack's RBEE_HOME, or a URL or `--port` with the
    queen's or the hive's port."""
    ports = "|".join(str(p) for p in (cli.queen_port, cli.hive_port))
    mine = re.compile(rf"{re.escape(str(cli.home))}|:({ports})(?!\d)|--port ({ports})(?!\d)")
    found = {}
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        if proc.info["status"] == psutil.STATUS_ZOMBIE or proc.pid == os.getpid():
            continue
        line = " ".join(proc.info.get("cmdline") or [])
        if mine.search(line):
            found[proc.pid] = line
    return found


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def metric(url: str, name: str) -> float:
    """One unlabelled series of a service's /metrics (0 when it is not there yet)."""
    text = httpx.get(url + "/metrics", timeout=2).text
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


ANSI = re.compile(r"\x1b(\[[0-9;?]*[ -/]*[@-~]|\][^\x07]*\x07|[@-Z\\-_])")


def plain(text: str) -> str:
    """Terminal output without its escape sequences."""
    return ANSI.sub("", text)


@contextmanager
def cli_stack(home: Path, extra_env: Mapping[str, str] | None = None) -> Iterator[Cli]:
    home.mkdir(parents=True, exist_ok=True)
    stack = Cli(home, f"http://127.0.0.1:{free_port()}", free_port(), dict(extra_env or {}))
    try:
        yield stack
    finally:
        if stack.daemon_pids():
            stack.run("down", timeout=60)
        for pid in stack_processes(stack):
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
