"""The hive's worker pool with real processes: a real hive and real llm-worker-rbee
workers on the tiny model. Timers are shortened through the environment."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared.auth import Audience, Role, mint_token
from tests.hive.support import download, start_hive, wait_worker, worker_pids, write_secret
from tests.procs import Processes, Service, free_port, pid_alive, wait_until

pytestmark = pytest.mark.integration

SECRET = "hive-cluster-secret-for-tests-0123456789"


def spawn(
    hive: Service, tiny_model: Path, headers: dict[str, str] | None = None, **extra: Any
) -> dict[str, Any]:
    response = httpx.post(
        hive.url + "/v1/workers/spawn",
        headers=headers or {},
        json={"model_ref": f"file:{tiny_model}", **extra},
        timeout=10,
    )
    assert response.status_code == 202, response.text
    body: dict[str, Any] = response.json()
    return body


def ready_hive(
    processes: Processes,
    home: Path,
    tiny_model: Path,
    env: dict[str, str] | None = None,
    port: int | None = None,
    headers: dict[str, str] | None = None,
) -> Service:
    hive = start_hive(processes, home, env=env, port=port)
    events = download(hive.url, f"file:{tiny_model}", headers=headers)
    assert events[-1]["type"] == "end", events
    return hive


def is_idle(status: int, body: dict[str, Any]) -> bool:
    if body.get("state") == "failed":
        raise AssertionError(f"worker failed: {body}")
    return status == 200 and body["state"] == "idle"


def test_spawn_loads_then_idles_and_serves_at_its_url(
    processes: Processes, rbee_home: Path, tiny_model: Path, tmp_path: Path
) -> None:
    secret = write_secret(tmp_path / "jwt.secret", SECRET)
    operator = {
        "Authorization": "Bearer "
        + mint_token(SECRET, role=Role.OPERATOR, audience=Audience.HIVE, ttl_s=300)
    }
    hive = ready_hive(
        processes,
        rbee_home,
        tiny_model,
        env={"RBEE_HIVE_JWT_SECRET_FILE": str(secret)},
        headers=operator,
    )
    assert httpx.get(hive.url + "/v1/workers").status_code == 401

    worker = spawn(hive, tiny_model, headers=operator)
    assert worker["state"] == "loading"
    assert worker["id"].startswith("w-") and worker["url"].startswith("http://127.0.0.1:")
    idle = wait_worker(hive.url, worker["id"], is_idle, headers=operator, what="idle")
    assert idle["url"] == worker["url"] and pid_alive(idle["pid"])
    assert idle["slots"] == {"total": 1, "busy": 0} and idle["restarts"] == 0
    # The worker got the cluster secret from its hive: its callback and readiness passed
    # auth, and it accepts a worker-audience token for inference at the reported URL.
    token = mint_token(SECRET, role=Role.OPERATOR, audience=Audience.WORKER, ttl_s=60)
    completion = httpx.post(
        idle["url"] + "/v1/completions",
        headers={"Authorization": f"Bearer {token}"},
        json={"model": "x", "prompt": "The cat", "max_tokens": 4},
        timeout=30,
    )
    assert completion.status_code == 200, completion.text
    assert completion.json()["usage"]["completion_tokens"] >= 1
    log = rbee_home / "logs" / f"worker-{worker['id']}.log"
    assert "ready callback accepted" in log.read_text()
    in_use = httpx.delete(f"{hive.url}/v1/models/tiny-llama-v1", headers=operator)
    assert (in_use.status_code, in_use.json()["error"]["code"]) == (409, "MODEL_IN_USE")

    stop = httpx.delete(f"{hive.url}/v1/workers/{worker['id']}", headers=operator, timeout=30)
    assert stop.status_code == 204
    listed = httpx.get(hive.url + "/v1/workers", headers=operator).json()["data"]
    assert listed == []
    assert not pid_alive(idle["pid"])


def test_killed_worker_is_detected_and_restarted(
    processes: Processes, rbee_home: Path, tiny_model: Path
) -> None:
    hive = ready_hive(processes, rbee_home, tiny_model)
    worker = spawn(hive, tiny_model)
    first = wait_worker(hive.url, worker["id"], is_idle, what="idle")
    killed_at = time.monotonic()
    Processes_kill(first["pid"])
    wait_worker(
        hive.url,
        worker["id"],
        lambda s, b: b["state"] != "idle",
        timeout=2.0,
        what="crash detected",
    )
    assert time.monotonic() - killed_at < 2.0
    again = wait_worker(
        hive.url,
        worker["id"],
        lambda s, b: b["state"] == "idle" and b["restarts"] == 1,
        timeout=20,
        what="restarted",
    )
    assert again["pid"] != first["pid"] and pid_alive(again["pid"])
    assert again["url"] == first["url"]  # its port was free again, so it kept it
    assert httpx.get(again["url"] + "/health", timeout=5).status_code == 200


def test_unresponsive_worker_is_killed_and_restarted(
    processes: Processes, rbee_home: Path, tiny_model: Path
) -> None:
    hive = ready_hive(
        processes,
        rbee_home,
        tiny_model,
        env={"RBEE_HIVE_HEALTH_CHECK_TIMEOUT_S": "0.3", "RBEE_HIVE_HEALTH_CHECK_FAILURES": "2"},
    )
    worker = spawn(hive, tiny_model)
    first = wait_worker(hive.url, worker["id"], is_idle, what="idle")
    os.kill(first["pid"], signal.SIGSTOP)  # alive, but answers nothing
    try:
        again = wait_worker(
            hive.url,
            worker["id"],
            lambda s, b: b["state"] == "idle" and b["restarts"] == 1,
            timeout=20,
            what="restart after failed health checks",
        )
    finally:
        if pid_alive(first["pid"]):
            os.kill(first["pid"], signal.SIGKILL)
    assert again["pid"] != first["pid"]
    assert not pid_alive(first["pid"])


def test_crashed_worker_restarts_with_growing_backoff_then_fails_at_the_limit(
    processes: Processes, rbee_home: Path, tiny_model: Path
) -> None:
    # Backoff 1, 2 s (the defaults); the third crash within the window is past the limit.
    hive = ready_hive(processes, rbee_home, tiny_model, env={"RBEE_HIVE_RESTART_LIMIT": "2"})
    worker = spawn(hive, tiny_model)
    current = wait_worker(hive.url, worker["id"], is_idle, what="idle")
    for restart, backoff in ((1, 1.0), (2, 2.0)):
        killed_at = time.monotonic()
        os.kill(current["pid"], signal.SIGKILL)
        old_pid = current["pid"]
        relaunched = wait_worker(
            hive.url,
            worker["id"],
            lambda s, b, old=old_pid: b["pid"] not in (None, old),
            timeout=backoff + 15,
            what=f"restart {restart}",
        )
        # The new process can only appear once the backoff has passed.
        waited = time.monotonic() - killed_at
        assert waited >= backoff - 0.05, (restart, waited)
        assert relaunched["restarts"] == restart
        current = wait_worker(
            hive.url,
            worker["id"],
            lambda s, b, n=restart: is_idle(s, b) and b["restarts"] == n,
            what=f"idle after restart {restart}",
        )
    last_pid = current["pid"]
    os.kill(last_pid, signal.SIGKILL)
    failed = wait_worker(
        hive.url, worker["id"], lambda s, b: b["state"] == "failed", timeout=5, what="failed"
    )
    assert failed["restarts"] == 2 and failed["pid"] is None
    assert "crashed more than 2 times" in hive.log()
    # It stays failed and listed, and no fourth process comes.
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        assert worker_pids(worker["id"]) == []
        time.sleep(0.25)
    listed = httpx.get(hive.url + "/v1/workers", timeout=5).json()["data"]
    assert [(w["id"], w["state"]) for w in listed] == [(worker["id"], "failed")]


def Processes_kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)


def test_worker_that_is_not_ready_in_time_is_killed_and_failed(
    processes: Processes, rbee_home: Path, tiny_model: Path
) -> None:
    # The real worker needs well over 0.3 s just to import llama.cpp, so it cannot be
    # ready within this budget.
    hive = ready_hive(
        processes,
        rbee_home,
        tiny_model,
        env={"RBEE_HIVE_READY_TIMEOUT_S": "0.3", "RBEE_HIVE_READY_TIMEOUT_PER_GIB_S": "0"},
    )
    worker = spawn(hive, tiny_model)
    failed = wait_worker(
        hive.url, worker["id"], lambda s, b: b["state"] == "failed", timeout=10, what="failed"
    )
    assert failed["restarts"] == 0  # a model that does not load is not retried
    assert f"worker {worker['id']} failed: it was not ready within 0.3 s and was killed" in (
        hive.log()
    )
    assert worker_pids(worker["id"]) == []
    listed = httpx.get(hive.url + "/v1/workers").json()["data"]
    assert [w["id"] for w in listed] == [worker["id"]]  # failed stays listed
    assert httpx.delete(f"{hive.url}/v1/workers/{worker['id']}").status_code == 204
    assert httpx.get(hive.url + "/v1/workers").json()["data"] == []


def test_idle_worker_is_stopped_after_the_idle_timeout(
    processes: Processes, rbee_home: Path, tiny_model: Path
) -> None:
    hive = ready_hive(
        processes, rbee_home, tiny_model, env={"RBEE_HIVE_WORKER_IDLE_TIMEOUT_S": "2"}
    )
    worker = spawn(hive, tiny_model)
    idle = wait_worker(hive.url, worker["id"], is_idle, what="idle")
    idle_since = time.monotonic()
    wait_worker(hive.url, worker["id"], lambda s, b: s == 404, timeout=15, what="idle stop")
    assert time.monotonic() - idle_since >= 1.5
    assert not pid_alive(idle["pid"])


def test_sigterm_stops_every_worker_and_exits_zero(
    processes: Processes, rbee_home: Path, tiny_model: Path
) -> None:
    hive = ready_hive(processes, rbee_home, tiny_model)
    workers = [spawn(hive, tiny_model) for _ in range(2)]
    pids = [wait_worker(hive.url, w["id"], is_idle, what="idle")["pid"] for w in workers]
    started = time.monotonic()
    hive.signal(signal.SIGTERM)
    assert hive.wait_exit(timeout=30) == 0
    assert time.monotonic() - started < 30
    assert [pid_alive(p) for p in pids] == [False, False]
    assert all(worker_pids(w["id"]) == [] for w in workers)


def test_shutdown_request_stops_workers_and_exits_zero(
    processes: Processes, rbee_home: Path, tiny_model: Path
) -> None:
    hive = ready_hive(processes, rbee_home, tiny_model)
    worker = spawn(hive, tiny_model)
    pid = wait_worker(hive.url, worker["id"], is_idle, what="idle")["pid"]
    assert httpx.post(hive.url + "/v1/shutdown", timeout=10).status_code == 202
    assert hive.wait_exit(timeout=30) == 0
    assert not pid_alive(pid)


def test_sigterm_kills_workers_that_cannot_drain_at_the_budget_in_parallel(
    processes: Processes, rbee_home: Path, tiny_model: Path
) -> None:
    hive = ready_hive(processes, rbee_home, tiny_model, env={"RBEE_HIVE_DRAIN_TIMEOUT_S": "1"})
    workers = [spawn(hive, tiny_model) for _ in range(2)]
    pids = [wait_worker(hive.url, w["id"], is_idle, what="idle")["pid"] for w in workers]
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)  # cannot act on SIGTERM: only SIGKILL ends it
    try:
        started = time.monotonic()
        hive.signal(signal.SIGTERM)
        assert hive.wait_exit(timeout=15) == 0
        took = time.monotonic() - started
        assert [pid_alive(p) for p in pids] == [False, False]
        assert all(worker_pids(w["id"]) == [] for w in workers)
        # It waited the 1 s budget, not 30 s (the default) nor forever.
        assert 0.9 <= took < 10, took
        kills = kill_times(hive.log(), [w["id"] for w in workers])
        # In parallel: both budgets ran out together, not one after the other.
        assert abs(kills[0] - kills[1]) < 0.5, kills
    finally:
        for pid in pids:
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)


def kill_times(log: str, worker_ids: list[str]) -> list[float]:
    """When the hive logged each worker's SIGKILL at the drain budget (epoch seconds)."""
    found: dict[str, float] = {}
    for line in log.splitlines():
        if not line.startswith("{"):
            continue
        record = json.loads(line)
        if record.get("action") == "worker_killed" and "did not stop in 1 s" in record["msg"]:
            found[record["worker_id"]] = datetime.fromisoformat(record["ts"]).timestamp()
    assert sorted(found) == sorted(worker_ids), log[-3000:]
    return [found[w] for w in worker_ids]


def test_worker_port_skips_a_port_in_use(
    processes: Processes, rbee_home: Path, tiny_model: Path
) -> None:
    with two_free_ports() as (busy, first):
        busy.listen()
        start = busy.getsockname()[1]
        hive = start_hive(processes, rbee_home, worker_port_start=start)
        assert download(hive.url, f"file:{tiny_model}")[-1]["type"] == "end"
        first.close()  # start + 1 is free now; start is still taken by someone else
        worker = spawn(hive, tiny_model)
        assert worker["url"] == f"http://127.0.0.1:{start + 1}"
        idle = wait_worker(hive.url, worker["id"], is_idle, what="idle")
        assert idle["port"] == start + 1
        assert httpx.get(idle["url"] + "/health", timeout=5).status_code == 200


@contextlib.contextmanager
def two_free_ports() -> Iterator[tuple[socket.socket, socket.socket]]:
    """Sockets bound to two adjacent free ports on 127.0.0.1 (port, port + 1)."""
    for _ in range(50):
        low, high = socket.socket(), socket.socket()
        try:
            low.bind(("127.0.0.1", 0))
            high.bind(("127.0.0.1", low.getsockname()[1] + 1))
        except OSError:
            low.close()
            high.close()
            continue
        with low, high:
            yield low, high
        return
    raise AssertionError("no two adjacent free ports")


def test_hive_restarted_within_the_grace_adopts_its_worker(
    processes: Processes, rbee_home: Path, tiny_model: Path
) -> None:
    grace = 4.0
    port = free_port()
    env = {"RBEE_WORKER_ORPHAN_GRACE_S": str(grace)}
    hive = ready_hive(processes, rbee_home, tiny_model, env=env, port=port)
    worker = spawn(hive, tiny_model)
    before = wait_worker(hive.url, worker["id"], is_idle, what="idle")
    hive.signal(signal.SIGKILL)
    hive.wait_exit(timeout=10)
    assert httpx.get(before["url"] + "/health", timeout=5).status_code == 200

    again = start_hive(processes, rbee_home, env=env, port=port)
    adopted = httpx.get(f"{again.url}/v1/workers/{worker['id']}", timeout=5).json()
    assert (adopted["pid"], adopted["url"]) == (before["pid"], before["url"])
    assert adopted["state"] == "idle"
    # Past the grace period it still serves: the new hive answers its orphan checks.
    deadline = time.monotonic() + grace + 1.5
    while time.monotonic() < deadline:
        assert pid_alive(before["pid"]), "the adopted worker exited"
        time.sleep(0.2)
    assert httpx.get(before["url"] + "/health", timeout=5).status_code == 200
    again.signal(signal.SIGTERM)
    assert again.wait_exit(timeout=30) == 0
    assert not pid_alive(before["pid"])


def test_worker_of_a_killed_hive_exits_when_the_grace_ends(
    processes: Processes, rbee_home: Path, tiny_model: Path
) -> None:
    grace = 2.0
    hive = ready_hive(
        processes, rbee_home, tiny_model, env={"RBEE_WORKER_ORPHAN_GRACE_S": str(grace)}
    )
    worker = spawn(hive, tiny_model)
    pid = wait_worker(hive.url, worker["id"], is_idle, what="idle")["pid"]
    hive.signal(signal.SIGKILL)
    hive.wait_exit(timeout=10)
    killed_at = time.monotonic()
    assert pid_alive(pid)  # it keeps serving while it may still be adopted
    wait_until(lambda: not pid_alive(pid), timeout=grace + 10, what="orphan exit")
    # It lived on for about the grace period (the worker checks every 0.5 s).
    assert time.monotonic() - killed_at >= grace - 1.0
    assert worker_pids(worker["id"]) == []


def test_restarted_hive_kills_a_leftover_it_cannot_adopt(
    processes: Processes, rbee_home: Path, tiny_model: Path
) -> None:
    port = free_port()
    hive = ready_hive(
        processes, rbee_home, tiny_model, port=port, env={"RBEE_WORKER_ORPHAN_GRACE_S": "30"}
    )
    worker = spawn(hive, tiny_model)
    pid = wait_worker(hive.url, worker["id"], is_idle, what="idle")["pid"]
    hive.signal(signal.SIGKILL)
    hive.wait_exit(timeout=10)
    os.kill(pid, signal.SIGSTOP)  # alive but no longer answering its health checks
    try:
        again = start_hive(
            processes, rbee_home, port=port, env={"RBEE_HIVE_HEALTH_CHECK_TIMEOUT_S": "0.5"}
        )
        assert httpx.get(again.url + "/v1/workers", timeout=5).json()["data"] == []
        wait_until(lambda: not pid_alive(pid), timeout=5, what="leftover killed")
    finally:
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_worker_log_is_json_lines(processes: Processes, rbee_home: Path, tiny_model: Path) -> None:
    hive = ready_hive(processes, rbee_home, tiny_model)
    worker = spawn(hive, tiny_model)
    wait_worker(hive.url, worker["id"], is_idle, what="idle")
    lines = (rbee_home / "logs" / f"worker-{worker['id']}.log").read_text().splitlines()
    assert lines and all(
        json.loads(line)["service"] == "llm-worker-rbee" for line in lines if line.startswith("{")
    )
