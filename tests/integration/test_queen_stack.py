"""The whole stack as real processes: queen + hives + the workers the hives spawn."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx
import openai
import pytest

from tests.procs import Processes, wait_until
from tests.queen.stack import (
    FAST_QUEEN,
    hive_state,
    queen_workers,
    run_task,
    start_hive,
    start_queen,
    started,
)

pytestmark = pytest.mark.integration


def test_cold_start_then_two_hives_share_the_work_and_a_dead_hive_gets_none(
    processes: Processes, tiny_model: Path, tmp_path: Path
) -> None:
    queen = start_queen(processes, tmp_path / "queen", env=FAST_QUEEN)
    h1 = start_hive(processes, queen, "h1", tmp_path / "h1")
    model = f"file:{tiny_model}"
    sdk = openai.OpenAI(base_url=queen.url + "/v1", api_key="unused", max_retries=0)

    # Cold start: no worker serves the model yet; the queen has a hive spawn one.
    assert queen_workers(queen) == []
    reply = sdk.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=5
    )
    assert reply.choices[0].message.content
    first = queen_workers(queen)
    assert [(w["hive_id"], w["model"]) for w in first] == [("h1", model)]

    # A second hive on its own port, with its own worker for the same model.
    h2 = start_hive(processes, queen, "h2", tmp_path / "h2")
    spawn = httpx.post(queen.url + "/v2/workers", json={"model": model, "hive_id": "h2"})
    assert spawn.status_code == 202, spawn.text
    wait_until(
        lambda: (
            {w["hive_id"] for w in queen_workers(queen) if w["state"] in ("idle", "busy")}
            == {"h1", "h2"}
        ),
        timeout=30,
        what="a ready worker on each hive",
    )
    by_hive = {w["id"]: w["hive_id"] for w in queen_workers(queen)}
    served = [started(run_task(queen, model))["worker_id"] for _ in range(6)]
    assert {by_hive[w] for w in served} == {"h1", "h2"}

    # A hive that dies stops receiving work within 15 s (its worker lives on as an orphan).
    h1.proc.kill()
    killed = time.monotonic()
    wait_until(lambda: hive_state(queen, "h1") == "stale", timeout=15, what="h1 stale")
    assert time.monotonic() - killed < 15
    served = [started(run_task(queen, model))["worker_id"] for _ in range(4)]
    assert {by_hive[w] for w in served} == {"h2"}
    assert h2.proc.poll() is None


def test_a_restarted_queen_keeps_its_hives_and_their_running_workers(
    processes: Processes, tiny_model: Path, tmp_path: Path
) -> None:
    queen = start_queen(processes, tmp_path / "queen")
    hive = start_hive(processes, queen, "h1", tmp_path / "h1")
    model = f"file:{tiny_model}"
    before = run_task(queen, model)
    worker_id = started(before)["worker_id"]
    hive_workers = httpx.get(hive.url + "/v1/workers").json()["data"]
    pid = hive_workers[0]["pid"]

    queen.signal(signal.SIGTERM)
    assert queen.wait_exit(30) == 0
    port = int(queen.url.rsplit(":", 1)[1])
    queen = start_queen(processes, tmp_path / "queen", port=port)
    assert [h["id"] for h in httpx.get(queen.url + "/v2/hives").json()["data"]] == ["h1"]
    wait_until(
        lambda: [w["id"] for w in queen_workers(queen)] == [worker_id],
        timeout=15,
        what="the running worker seen again",
    )
    after = run_task(queen, model)
    assert started(after)["worker_id"] == worker_id and after[-2]["type"] == "end"
    again = httpx.get(hive.url + "/v1/workers").json()["data"]
    assert [(w["id"], w["pid"]) for w in again] == [(worker_id, pid)]
