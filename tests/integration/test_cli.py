"""The `rbee` command as a user runs it: from nothing to tokens, warm starts, Ctrl+C,
chat, errors, `rbee up` twice and `rbee down`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import httpx
import pytest

from tests.integration.clistack import (
    RBEE,
    Cli,
    cli_stack,
    metric,
    one_line_error,
    stack_processes,
)
from tests.procs import free_port, pid_alive, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def cli(tmp_path: Path) -> Iterator[Cli]:
    with cli_stack(tmp_path / "home") as stack:
        yield stack


def slots_busy(worker_url: str) -> int:
    busy: int = httpx.get(worker_url + "/v1/ready", timeout=2).json()["slots_busy"]
    return busy


def test_infer_from_nothing_then_warm_then_down(cli: Cli) -> None:
    assert stack_processes(cli) == {}
    prompt = "The capital of France is Paris. The capital of Germany is"
    started = time.perf_counter()
    first = cli.run("infer", "-p", prompt, "--max-tokens", "12", "--temperature", "0")
    cold_s = time.perf_counter() - started
    assert first.returncode == 0, first.stderr
    assert "Berlin" in first.stdout
    assert "OpenAI base URL" not in first.stdout and "OpenAI base URL" in first.stderr
    daemons = cli.daemon_pids()
    assert len(daemons) == 2 and all(pid_alive(p) for p in daemons.values())  # they stay up
    workers = cli.json("workers", "list")
    assert len(workers) == 1
    worker_pid = workers[0]["pid"]

    started = time.perf_counter()
    second = cli.run("infer", "-p", "1, 2, 3, 4, 5,", "--max-tokens", "6", "--temperature", "0")
    warm_s = time.perf_counter() - started
    assert second.returncode == 0, second.stderr
    assert second.stdout.startswith(" 6, 7")
    after = cli.json("workers", "list")
    assert [w["id"] for w in after] == [w["id"] for w in workers]  # nothing spawned
    assert after[0]["pid"] == worker_pid
    # No daemons to start, no model to assemble, no spawn: just the CLI and the tokens
    # (relative to the cold start, so a busy machine does not make it flaky).
    assert warm_s < cold_s / 3, (warm_s, cold_s)

    running = stack_processes(cli)
    assert {*daemons.values(), worker_pid} <= running.keys(), running
    cli.ok("down")
    assert stack_processes(cli) == {}  # nothing left once `rbee down` returned


def test_up_twice_starts_nothing_new_and_down_leaves_no_process(cli: Cli, tiny_model: Path) -> None:
    first = cli.ok("up")
    assert f"{cli.queen_url}/v1" in first.stdout
    pids = cli.daemon_pids()
    assert set(pids) == {"queen", "hive"}
    running = stack_processes(cli)
    assert set(pids.values()) <= running.keys(), running

    second = cli.ok("up")
    assert second.stderr.count("already running") == 2, second.stderr
    assert f"{cli.queen_url}/v1" in second.stdout
    assert cli.daemon_pids() == pids
    assert stack_processes(cli) == running  # the same processes, no new one

    # With a worker running too, `rbee down` stops everything the stack started.
    cli.ok("infer", "-m", f"file:{tiny_model}", "-p", "hi", "--max-tokens", "2")
    (worker,) = cli.json("workers", "list")
    assert worker["pid"] in stack_processes(cli)
    down = cli.ok("down")
    assert "stopped" in down.stderr
    assert stack_processes(cli) == {}, stack_processes(cli)
    assert not (cli.home / "run" / "queen.pid").exists()


def test_ctrl_c_cancels_the_job_and_exits_130(cli: Cli, tiny_model: Path) -> None:
    cli.ok("up")
    model = f"file:{tiny_model}"
    cli.ok("infer", "-m", model, "-p", "warm up", "--max-tokens", "2")
    (worker,) = cli.json("workers", "list")
    url = worker["url"]
    cancelled = metric(url, "rbee_cancellations_total")
    proc = cli.popen("infer", "-m", model, "-p", "a long story", "--max-tokens", "3800")
    assert proc.stdout is not None
    proc.stdout.read(20)  # tokens are flowing
    assert slots_busy(url) == 1  # the job is still running when Ctrl+C comes
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    freed_at = wait_until(
        lambda: time.monotonic() if slots_busy(url) == 0 else None,
        timeout=5,
        interval=0.01,
        what="the worker's slot to be free",
    )
    assert isinstance(freed_at, float)
    assert freed_at - t0 < 1.0, f"slot freed {freed_at - t0:.3f} s after SIGINT"
    _, err = proc.communicate(timeout=15)  # also closes the pipes
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "cancelled" in err
    # The worker stopped the generation as cancelled (it did not run to its end).
    wait_until(
        lambda: metric(url, "rbee_cancellations_total") == cancelled + 1,
        timeout=5,
        what="the worker to count the cancellation",
    )


class Reader:
    """Everything a pipe says, collected by a thread as it comes."""

    def __init__(self, pipe: IO[str]) -> None:
        self.text = ""
        self._pipe = pipe
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while chunk := self._pipe.read(1):
            self.text += chunk

    def join(self) -> None:
        self._thread.join(timeout=10)


def test_chat_sends_the_whole_conversation_with_every_turn(cli: Cli, tiny_model: Path) -> None:
    cli.ok("up")
    model = f"file:{tiny_model}"
    cli.ok("infer", "-m", model, "-p", "warm up", "--max-tokens", "2")
    (worker,) = cli.json("workers", "list")
    proc = cli.popen(
        "chat", "-m", model, "--max-tokens", "8", "--temperature", "0", stdin=subprocess.PIPE
    )
    assert proc.stdin is not None and proc.stdout is not None
    out = Reader(proc.stdout)
    prompt_tokens: list[float] = []

    def turn(line: str, prompts_after: int) -> None:
        before = metric(worker["url"], "rbee_tokens_in_total")
        assert proc.stdin is not None
        proc.stdin.write(line + "\n")
        proc.stdin.flush()
        wait_until(lambda: out.text.count("you> ") == prompts_after, timeout=60, what="a reply")
        wait_until(
            lambda: metric(worker["url"], "rbee_tokens_in_total") > before,
            timeout=5,
            what="the worker to count the prompt",
        )
        prompt_tokens.append(metric(worker["url"], "rbee_tokens_in_total") - before)

    try:
        wait_until(lambda: "you> " in out.text, timeout=30, what="the first prompt")
        first = (
            "Please remember these words for later: apple, river, mountain, violin, "
            "lantern, copper, meadow, thunder, harbor and velvet. Thank you very much."
        )
        turn(first, prompts_after=2)
        turn("ok", prompts_after=3)
        proc.stdin.close()  # EOF ends the chat
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        out.join()
        err = proc.stderr.read() if proc.stderr else ""
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
    assert "Traceback" not in err, err
    assert out.text.count("rbee> ") == 2, out.text
    # "ok" alone is a few tokens; the worker got more than the whole first turn's prompt,
    # so the second request carried the first question and its answer.
    n1, n2 = prompt_tokens
    assert n2 > n1, prompt_tokens


def test_errors_are_one_line_and_exit_1(cli: Cli) -> None:
    unreachable = cli.run("--queen-url", f"http://127.0.0.1:{free_port()}", "status")
    assert "cannot reach the queen" in one_line_error(unreachable)
    cli.ok("up")
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
        [
            str(Path(sys.executable).parent / "queen-rbee"),
            "--port",
            str(port),
            "--jwt-secret-file",
            str(secret),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: httpx.get(url + "/health").status_code == 200, timeout=30, what="queen")
        result = subprocess.run(
            [RBEE, "--queen-url", url, "--token", "not-a-valid-token", "status"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert "INVALID_API_KEY" in one_line_error(result)
        mint = ["token", "create", "--role", "operator", "--ttl", "1h"]
        token = subprocess.run(
            [RBEE, *mint, "--jwt-secret-file", str(secret)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout.strip()
        ok = subprocess.run(
            [RBEE, "--queen-url", url, "--token", token, "status", "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert ok.returncode == 0, ok.stderr
        assert json.loads(ok.stdout)["hives"] == []
    finally:
        queen.terminate()
        queen.wait(timeout=30)
