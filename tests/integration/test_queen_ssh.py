"""Hives over SSH, and the queen's graceful stop, against a real SSH server."""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.procs import Processes, free_port, pid_alive, wait_until
from tests.queen.sshserver import LocalSshServer
from tests.queen.stack import HIVE_ENV, BackgroundStream, hive_state, start_queen

pytestmark = pytest.mark.integration

VENV_BIN = Path(sys.executable).parent


@pytest.fixture
def ssh_server(tmp_path: Path) -> Iterator[LocalSshServer]:
    server = LocalSshServer(
        tmp_path,
        {
            **HIVE_ENV,
            "RBEE_HOME": str(tmp_path / "remote-home"),
            "RBEE_HIVE_WORKER_PORT_START": str(free_port()),
        },
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_a_hive_added_by_ssh_is_started_and_sigterm_drains_then_stops_it_and_restart_starts_it(
    processes: Processes, tiny_model: Path, tmp_path: Path, ssh_server: LocalSshServer
) -> None:
    hive_port = free_port()
    queen_env = {
        "RBEE_QUEEN_SSH_NO_HOST_CHECK": "1",
        "RBEE_QUEEN_SSH_HIVE_COMMAND": str(VENV_BIN / "rbee-hive"),
        "RBEE_QUEEN_SSH_HIVE_PORT": str(hive_port),
    }
    queen_port = free_port()
    queen = start_queen(processes, tmp_path / "queen", env=queen_env, port=queen_port)
    target = {
        "host": "127.0.0.1",
        "port": ssh_server.port,
        "user": "rbee",
        "key_path": str(ssh_server.key_path),
    }
    added = httpx.post(queen.url + "/v2/hives", json={"id": "remote", "ssh": target}, timeout=60)
    assert added.status_code == 201, added.text
    assert added.json()["url"] == f"http://127.0.0.1:{hive_port}"
    assert any(c.endswith("--version") for c in ssh_server.commands)  # the preflight
    hive_url = f"http://127.0.0.1:{hive_port}"
    assert httpx.get(hive_url + "/health").status_code == 200
    wait_until(lambda: hive_state(queen, "remote") == "online", timeout=15, what="hive online")

    # A long stream is running when SIGTERM arrives: it finishes, new work is refused.
    body = {"model": f"file:{tiny_model}", "prompt": "Tell me a story", "max_tokens": 1500}
    stream = BackgroundStream(queen.url, body)
    assert stream.streaming.wait(60), stream.lines
    worker_pids = [w["pid"] for w in httpx.get(hive_url + "/v1/workers").json()["data"]]
    queen.signal(signal.SIGTERM)
    at_signal = len(stream.lines)
    events = stream.join()
    assert len(stream.lines) > at_signal + 10  # the stream went on after the signal
    assert events[-1] == "[DONE]"
    assert events[-2]["type"] == "end" and events[-2]["stop_reason"] == "length"
    assert queen.wait_exit(30) == 0
    # The hive this queen started is gone, and so are its workers.
    wait_until(lambda: not _answers(hive_url), timeout=10, what="hive stopped")
    wait_until(
        lambda: not any(pid_alive(p) for p in worker_pids), timeout=10, what="workers stopped"
    )

    # Started again, the queen brings its SSH hive back up.
    queen = start_queen(processes, tmp_path / "queen", env=queen_env, port=queen_port)
    wait_until(lambda: _answers(hive_url), timeout=30, what="hive started again")
    assert hive_state(queen, "remote") == "online"


def _answers(url: str) -> bool:
    try:
        return httpx.get(url + "/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
