"""The `rbee` command as a user runs it: from nothing to tokens, warm starts, Ctrl+C,
errors, `rbee down`, and pulls with progress."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.procs import free_port, pid_alive, wait_until

pytestmark = pytest.mark.integration
RBEE = str(Path(sys.executable).parent / "rbee")


@dataclass
class Cli:
    home: Path
    queen_url: str
    hive_port: int

    def env(self) -> dict[str, str]:
        return {**os.environ, "RBEE_HOME": str(self.home), "RBEE_QUEEN_URL": self.queen_url,
                "RBEE_HIVE_PORT": str(self.hive_port), "PYTHONUNBUFFERED": "1",
                "RBEE_HIVE_HEARTBEAT_INTERVAL_S": "0.5"}

    def run(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return subprocess.run([RBEE, *args], env=self.env(), capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen([RBEE, *args], env=self.env(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)

    def json(self, *args: str) -> Any:
        result = self.run(*args, "--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def daemon_pids(self) -> list[int]:
        pids = []
        for pid_file in (self.home / "run").glob("*.pid"):
            try:
                pids.append(int(pid_file.read_text()))
            except (OSError, ValueError):
                pass
        return pids


@pytest.fixture
def cli(tmp_path: Path) -> Iterator[Cli]:
    home = tmp_path / "home"
    home.mkdir()
    stack = Cli(home, f"http://127.0.0.1:{free_port()}", free_port())
    seen: set[int] = set()
    try:
        yield stack
    finally:
        seen.update(stack.daemon_pids())
        try:
            workers = stack.json("workers", "list") if stack.daemon_pids() else []
            seen.update(w["pid"] for w in workers if w.get("pid"))
        except Exception:  # the stack may already be gone
            pass
        stack.run("down", timeout=60)
        for pid in seen:
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_infer_from_nothing_then_warm_then_down(cli: Cli) -> None:
    prompt = "The capital of France is Paris. The capital of Germany is"
    first = cli.run("infer", "-p", prompt, "--max-tokens", "12", "--temperature", "0")
    assert first.returncode == 0, first.stderr
    assert "Berlin" in first.stdout
    daemons = cli.daemon_pids()
    assert len(daemons) == 2 and all(pid_alive(p) for p in daemons)  # they stay up
    workers = cli.json("workers", "list")
    assert len(workers) == 1
    worker_pid = workers[0]["pid"]

    started = time.perf_counter()
    second = cli.run("infer", "-p", "1, 2, 3, 4, 5,", "--max-tokens", "6", "--temperature",
                     "0")
    warm_s = time.perf_counter() - started
    assert second.returncode == 0, second.stderr
    assert second.stdout.startswith(" 6, 7")
    after = cli.json("workers", "list")
    assert [w["id"] for w in after] == [w["id"] for w in workers]  # nothing spawned
    assert after[0]["pid"] == worker_pid
    assert warm_s < 10, warm_s  # no download, no spawn: just the CLI and the tokens

    down = cli.run("down")
    assert down.returncode == 0, down.stderr
    for pid in [*daemons, worker_pid]:
        wait_until(lambda pid=pid: not pid_alive(pid), timeout=30, what=f"pid {pid} to exit")


def test_ctrl_c_cancels_the_job_and_exits_130(cli: Cli, tiny_model: Path) -> None:
    assert cli.run("up").returncode == 0
    model = f"file:{tiny_model}"
    warm = cli.run("infer", "-m", model, "-p", "warm up", "--max-tokens", "2")
    assert warm.returncode == 0, warm.stderr
    proc = cli.popen("infer", "-m", model, "-p", "a long story", "--max-tokens", "3800")
    assert proc.stdout is not None
    proc.stdout.read(20)  # tokens are flowing
    worker = cli.json("workers", "list")[0]
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=15)  # also closes the pipes
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    started = time.perf_counter()
    wait_until(lambda: httpx.get(worker["url"] + "/v1/ready").json()["slots_busy"] == 0,
               timeout=5, what="the worker's slot to be free")
    assert time.perf_counter() - started < 1.0


def test_errors_are_one_line_and_exit_1(cli: Cli) -> None:
    unreachable = cli.run("--queen-url", f"http://127.0.0.1:{free_port()}", "status")
    assert "cannot reach the queen" in one_line_error(unreachable)
    assert cli.run("up").returncode == 0
    unknown = cli.run("infer", "-m", "no-such-model-anywhere", "-p", "hi")
    assert "MODEL_NOT_FOUND" in one_line_error(unknown)
    bad = cli.run("infer", "-m", "bad;model", "-p", "hi")
    assert "VALIDATION_ERROR" in one_line_error(bad)


def test_bad_token_is_refused_with_one_line(tmp_path: Path) -> None:
    secret = tmp_path / "jwt.secret"
    secret.write_text("a-cluster-secret-long-enough-for-hs256-0123\n")
    secret.chmod(0o600)
    port = free_port()
    env = {**os.environ, "RBEE_HOME": str(tmp_path)}
    queen = subprocess.Popen(
        [str(Path(sys.executable).parent / "queen-rbee"), "--port", str(port),
         "--jwt-secret-file", str(secret)], env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: httpx.get(url + "/health").status_code == 200, timeout=30,
                   what="queen")
        result = subprocess.run([RBEE, "--queen-url", url, "--token", "not-a-valid-token",
                                 "status"], env=env, capture_output=True, text=True, timeout=60)
        assert "INVALID_API_KEY" in one_line_error(result)
        token = subprocess.run([RBEE, "token", "create", "--role", "operator", "--ttl", "1h",
                                "--jwt-secret-file", str(secret)], env=env,
                               capture_output=True, text=True, timeout=60).stdout.strip()
        ok = subprocess.run([RBEE, "--queen-url", url, "--token", token, "status", "--json"],
                            env=env, capture_output=True, text=True, timeout=60)
        assert ok.returncode == 0, ok.stderr
        assert json.loads(ok.stdout)["hives"] == []
    finally:
        queen.terminate()
        queen.wait(timeout=30)


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


def test_models_pull_shows_progress_and_lists_the_model(cli: Cli, tiny_model: Path,
                                                        tmp_path: Path) -> None:
    served = tmp_path / "served"
    served.mkdir()
    (served / "pulled-tiny.gguf").write_bytes(tiny_model.read_bytes())
    sha = hashlib.sha256(tiny_model.read_bytes()).hexdigest()
    server = ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: _Quiet(*a, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        assert cli.run("up").returncode == 0
        ref = f"http://127.0.0.1:{server.server_port}/pulled-tiny.gguf#sha256={sha}"
        pull = cli.run("models", "pull", ref)
        assert pull.returncode == 0, pull.stderr
        assert "pulled" in pull.stderr
        listed = cli.json("models", "list")
        entry = next(m for m in listed if m["model_ref"] == ref)
        assert entry["state"] == "ready" and entry["sha256"] == sha
    finally:
        server.shutdown()
        server.server_close()
