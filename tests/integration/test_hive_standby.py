"""The standby worker: a process the hive starts ahead of need, which a spawn turns into
the new worker (no new process), replaced once that worker is ready. Real hive, real
workers on the tiny model."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import psutil
import pytest

from tests.hive.support import download, start_hive, wait_worker
from tests.integration.test_hive_workers import is_idle, spawn
from tests.procs import Processes, Service, pid_alive, wait_until

pytestmark = pytest.mark.integration


def standbys(hive: Service) -> list[tuple[int, str]]:
    """(pid, worker id) of the hive's children that wait as standby workers."""
    found = []
    for child in psutil.Process(hive.pid).children():
        try:
            cmdline = child.cmdline()
        except psutil.Error:
            continue
        if "--standby" in cmdline and child.status() != psutil.STATUS_ZOMBIE:
            found.append((child.pid, cmdline[cmdline.index("--worker-id") + 1]))
    return found


def hive_with_model(processes: Processes, home: Path, model: Path, **env: str) -> Service:
    hive = start_hive(processes, home, env=env)
    assert download(hive.url, f"file:{model}")[-1]["type"] == "end"
    return hive


def test_a_spawn_becomes_the_standby_and_a_new_standby_follows(
    processes: Processes, rbee_home: Path, tiny_model: Path
) -> None:
    hive = hive_with_model(processes, rbee_home, tiny_model)
    [(pid, standby_id)] = wait_until(lambda: standbys(hive), what="a standby worker")  # type: ignore[misc]

    worker = spawn(hive, tiny_model)
    assert worker["id"] == standby_id
    idle = wait_worker(hive.url, worker["id"], is_idle)
    assert idle["pid"] == pid  # the waiting process became the worker: nothing new started
    body = {"model": "tiny", "prompt": "Once upon a time", "max_tokens": 8}
    answer = httpx.post(idle["url"] + "/v1/completions", json=body, timeout=30)
    assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] == 8

    replacement = wait_until(
        lambda: [s for s in standbys(hive) if s[0] != pid], what="a new standby worker"
    )
    [(new_pid, new_id)] = replacement  # type: ignore[misc]
    assert new_id != standby_id
    second = spawn(hive, tiny_model)
    assert second["id"] == new_id
    assert wait_worker(hive.url, second["id"], is_idle)["pid"] == new_pid

    children = [c.pid for c in psutil.Process(hive.pid).children()]
    assert {pid, new_pid} <= set(children)
    hive.signal(signal.SIGTERM)
    assert hive.wait_exit(timeout=30) == 0
    assert [c for c in children if pid_alive(c)] == []


def test_the_standby_goes_when_its_hive_stops_or_dies(
    processes: Processes, rbee_home: Path, tiny_model: Path
) -> None:
    hive = hive_with_model(processes, rbee_home, tiny_model)
    [(pid, _)] = wait_until(lambda: standbys(hive), what="a standby worker")  # type: ignore[misc]
    hive.signal(signal.SIGTERM)
    assert hive.wait_exit(timeout=30) == 0
    assert not pid_alive(pid)

    hive = hive_with_model(processes, rbee_home, tiny_model)
    [(pid, _)] = wait_until(lambda: standbys(hive), what="a standby worker")  # type: ignore[misc]
    hive.signal(signal.SIGKILL)
    hive.wait_exit(timeout=10)
    # Its standard input was the dead hive's pipe: it sees the end of it and exits.
    wait_until(lambda: not pid_alive(pid), timeout=10, what="the orphaned standby to exit")


def test_without_standby_a_spawn_starts_a_fresh_process(
    processes: Processes, rbee_home: Path, tiny_model: Path
) -> None:
    hive = hive_with_model(processes, rbee_home, tiny_model, RBEE_HIVE_STANDBY_WORKER="false")
    worker = spawn(hive, tiny_model)
    idle = wait_worker(hive.url, worker["id"], is_idle)
    assert idle["pid"] in [c.pid for c in psutil.Process(hive.pid).children()]
    assert standbys(hive) == []
