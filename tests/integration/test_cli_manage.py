"""`rbee hive`, `rbee models` and `rbee workers` against a real local stack: hives added by
URL and over SSH, started and stopped; pulls with a live progress bar on a terminal;
models removed only when no worker uses them; workers stopped."""

from __future__ import annotations

import fcntl
import hashlib
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.clistack import RBEE, Cli, cli_stack, one_line_error, plain
from tests.procs import free_port, pid_alive, wait_until
from tests.queen.sshserver import LocalSshServer
from tests.queen.stack import HIVE_ENV

pytestmark = pytest.mark.integration

VENV_BIN = Path(sys.executable).parent


@pytest.fixture
def cli(tmp_path: Path) -> Iterator[Cli]:
    with cli_stack(tmp_path / "home") as stack:
        yield stack


def answers(url: str) -> bool:
    try:
        return httpx.get(url + "/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_hives_models_and_workers_from_the_cli(cli: Cli, tiny_model: Path) -> None:
    cli.ok("up")
    (local,) = cli.json("hive", "list")
    extra_url = f"http://127.0.0.1:{free_port()}"

    assert cli.ok("hive", "add", "extra", "--url", extra_url).stdout.strip() == "hive extra added"
    assert {h["id"]: h["url"] for h in cli.json("hive", "list")} == {
        local["id"]: local["url"],
        "extra": extra_url,
    }
    again = cli.run("hive", "add", "extra", "--url", extra_url)
    assert "HIVE_ALREADY_EXISTS" in one_line_error(again)
    start = cli.run("hive", "start", "extra")
    assert "HIVE_NOT_MANAGED" in (line := one_line_error(start)) and "added by URL" in line
    assert cli.ok("hive", "remove", "extra").stdout.strip() == "hive extra removed"
    assert [h["id"] for h in cli.json("hive", "list")] == [local["id"]]
    assert "HIVE_NOT_FOUND" in one_line_error(cli.run("hive", "remove", "extra"))

    ref = f"file:{tiny_model}"
    cli.ok("models", "pull", ref)
    (entry,) = [m for m in cli.json("models", "list") if m["model_ref"] == ref]
    model_file = Path(entry["path"])
    assert model_file.is_file()
    cli.ok("infer", "-m", ref, "-p", "hi", "--max-tokens", "2")
    (worker,) = cli.json("workers", "list")
    in_use = cli.run("models", "rm", entry["id"])
    assert "MODEL_IN_USE" in one_line_error(in_use)
    assert model_file.is_file()

    stopping = cli.ok("workers", "stop", worker["id"]).stdout.strip()
    assert stopping == f"worker {worker['id']} stopping"
    wait_until(lambda: not pid_alive(worker["pid"]), timeout=30, what="the worker to exit")
    wait_until(lambda: cli.json("workers", "list") == [], timeout=10, what="no worker listed")
    assert "WORKER_NOT_FOUND" in one_line_error(cli.run("workers", "stop", worker["id"]))

    removed = cli.ok("models", "rm", entry["id"])
    assert removed.stdout.strip() == f"model {entry['id']} removed"
    assert not model_file.exists()
    assert all(m["id"] != entry["id"] for m in cli.json("models", "list"))
    assert "MODEL_NOT_FOUND" in one_line_error(cli.run("models", "rm", entry["id"]))

    # The local hive registered itself by URL: the queen can stop it, not start it.
    hive_pid = cli.daemon_pids()["hive"]
    stop = cli.ok("hive", "stop", local["id"])
    assert stop.stdout.strip() == f"hive {local['id']} stopped"
    wait_until(lambda: not pid_alive(hive_pid), timeout=30, what="the hive to exit")
    assert "HIVE_NOT_MANAGED" in one_line_error(cli.run("hive", "start", local["id"]))
    assert cli.ok("hive", "stop", local["id"]).stdout.strip().endswith("was not running")


@pytest.fixture
def ssh_server(tmp_path: Path) -> Iterator[LocalSshServer]:
    env = {
        **HIVE_ENV,
        "RBEE_HOME": str(tmp_path / "remote-home"),
        "RBEE_HIVE_WORKER_PORT_START": str(free_port()),
    }
    server = LocalSshServer(tmp_path, env)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_a_hive_added_over_ssh_is_stopped_and_started_from_the_cli(
    tmp_path: Path, ssh_server: LocalSshServer
) -> None:
    remote_port = free_port()
    queen_env = {
        "RBEE_QUEEN_SSH_NO_HOST_CHECK": "1",
        "RBEE_QUEEN_SSH_HIVE_COMMAND": str(VENV_BIN / "rbee-hive"),
        "RBEE_QUEEN_SSH_HIVE_PORT": str(remote_port),
    }
    remote = f"http://127.0.0.1:{remote_port}"
    with cli_stack(tmp_path / "home", queen_env) as cli:
        cli.ok("up")
        target = f"rbee@127.0.0.1:{ssh_server.port}"
        added = cli.ok("hive", "add", "remote", "--ssh", target, "--key", str(ssh_server.key_path))
        assert added.stdout.strip() == "hive remote added"
        assert answers(remote)

        assert cli.ok("hive", "stop", "remote").stdout.strip() == "hive remote stopped"
        assert not answers(remote)
        assert cli.ok("hive", "start", "remote").stdout.strip() == "hive remote started"
        assert answers(remote)
        started = cli.ok("hive", "start", "remote").stdout.strip()
        assert started == "hive remote is already running"
        wait_until(
            lambda: (
                {h["id"]: h["state"] for h in cli.json("hive", "list")}.get("remote") == "online"
            ),
            timeout=30,
            what="the restarted hive to register",
        )

        cli.ok("hive", "remove", "remote")  # the queen stops the hive it started
        assert not answers(remote)
        assert "remote" not in {h["id"] for h in cli.json("hive", "list")}


class SlowFile:
    """One file served like a slow link: the first half in small pieces, then the rest
    only once `release` is set, so the test sees the progress while the download runs."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.release = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        slow = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                data = slow.payload
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                half, piece = len(data) // 2, len(data) // 32
                try:
                    for start in range(0, half, piece):
                        self.wfile.write(data[start : min(start + piece, half)])
                        self.wfile.flush()
                        time.sleep(0.05)  # the slow link itself, not a wait for a condition
                    slow.release.wait(timeout=60)
                    self.wfile.write(data[half:])
                except OSError:
                    self.close_connection = True

        return Handler

    def __enter__(self) -> SlowFile:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


class Terminal:
    """A command run on a pseudo-terminal, as in a person's shell: what it writes, as it
    comes."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self._fd, child = pty.openpty()
        fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
        self.proc = subprocess.Popen(
            argv, env=env, stdin=child, stdout=child, stderr=child, start_new_session=True
        )
        os.close(child)
        self.output = ""

    def read_until(self, done: Callable[[str], object] | None, timeout: float) -> str:
        """Read until `done` holds for the plain text so far (for None: until the end)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if done is not None and done(plain(self.output)):
                return plain(self.output)
            ready, _, _ = select.select([self._fd], [], [], 0.1)
            if not ready:
                continue
            try:
                chunk = os.read(self._fd, 65536)
            except OSError:  # EIO: every writer of the terminal is gone
                chunk = b""
            if not chunk:
                if done is None:
                    return plain(self.output)
                raise AssertionError(f"the output ended too soon:\n{self.output}")
            self.output += chunk.decode(errors="replace")
        raise AssertionError(f"timed out after {timeout} s:\n{self.output}")

    def close(self) -> int:
        if self.proc.poll() is None:
            self.proc.kill()
        code = self.proc.wait(timeout=30)
        os.close(self._fd)
        return code


# rich's DownloadColumn ("0.6/1.3 MB"), then the rate the hive measured ("803.1 kB/s")
BAR = re.compile(
    r"(\d+(?:\.\d+)?)/(\d+(?:\.\d+)?) (?:bytes|kB|MB) +\d+(?:\.\d+)? (?:bytes|kB|MB)/s"
)


PULLED = re.compile(r"pulled \S+ on \S+")


def bar_mid_download(text: str) -> bool:
    """A bar with bytes of the total and a rate, some bytes done, not all."""
    return any(0 < float(m[1]) < float(m[2]) for m in BAR.finditer(text))


def test_models_pull_shows_a_live_progress_bar_and_lists_the_model(
    cli: Cli, tiny_model: Path
) -> None:
    payload = tiny_model.read_bytes()
    sha = hashlib.sha256(payload).hexdigest()
    cli.ok("up")
    with SlowFile(payload) as files:
        ref = f"{files.url}/slow-tiny.gguf#sha256={sha}"
        env = {**cli.env(), "TERM": "xterm-256color"}
        terminal = Terminal([RBEE, "models", "pull", ref], env)
        try:
            # Half the file is on its way, the rest is held back: the bar shows bytes of
            # the total and a rate while the download is still running.
            during = terminal.read_until(bar_mid_download, timeout=60)
            assert "slow-tiny.gguf on" in during and not PULLED.search(during), during
            files.release.set()
            after = terminal.read_until(None, timeout=60)
        finally:
            code = terminal.close()
    assert code == 0, after
    assert PULLED.search(after), after
    assert "Traceback" not in after
    listed = cli.json("models", "list")
    entry = next(m for m in listed if m["model_ref"] == ref)
    assert entry["state"] == "ready" and entry["sha256"] == sha
