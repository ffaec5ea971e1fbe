"""The whole stack as real processes: queen + hives + the workers the hives spawn."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import httpx
import openai
import pytest

from shared.auth import Audience, Role, mint_token
from tests.procs import Processes, pid_alive, wait_until
from tests.queen.stack import (
    FAST_QUEEN,
    data_events,
    hive_state,
    queen_workers,
    run_task,
    sse_lines,
    start_hive,
    start_queen,
    started,
)
from tests.tinymodel import N_EMBD

pytestmark = pytest.mark.integration


def test_cold_start_then_two_hives_share_the_work_and_a_dead_hive_gets_none(
    processes: Processes, tiny_model: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    queen = start_queen(processes, tmp_path / "queen", env=FAST_QUEEN)
    h1 = start_hive(processes, queen, "h1", tmp_path / "h1")
    model = f"file:{tiny_model}"
    sdk = openai.OpenAI(base_url=queen.url + "/v1", api_key="unused", max_retries=0)
    request.addfinalizer(sdk.close)

    # Cold start: no worker serves the model yet; the queen has a hive spawn one, and the
    # native stream says so (a `loading` event) before the job starts.
    assert queen_workers(queen) == []
    events = run_task(queen, model)
    kinds = [e["type"] for e in events[:-1]]
    assert "loading" in kinds and kinds.index("loading") < kinds.index("started"), kinds
    loading = next(e for e in events[:-1] if e["type"] == "loading")
    assert loading["stage"] in ("downloading", "spawning", "loading_model")
    assert 0 <= loading["progress"] <= 1
    assert kinds[-1] == "end" and events[-1] == "[DONE]"
    first = queen_workers(queen)
    assert [(w["hive_id"], w["model"]) for w in first] == [("h1", model)]

    # The official SDK against the worker the hive spawned: chat, a stream with usage,
    # embeddings (the worker was not started with --embeddings: it makes them on demand).
    reply = sdk.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=5
    )
    assert reply.choices[0].message.content
    chunks = list(
        sdk.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "Hi"}],
            max_tokens=5,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-2].choices[0].finish_reason == "length"
    usage = chunks[-1].usage  # the last chunk before the stream's end
    assert chunks[-1].choices == [] and usage is not None
    assert all(c.usage is None for c in chunks[:-1])
    assert usage.completion_tokens == 5 and usage.prompt_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    embedded = sdk.embeddings.create(model=model, input=["hello world", "something else"])
    a, b = (item.embedding for item in embedded.data)
    assert len(a) == len(b) == N_EMBD and a != b
    assert all(abs(sum(x * x for x in v) - 1.0) < 1e-4 for v in (a, b))  # L2-normalised
    assert embedded.usage.prompt_tokens > 0

    # A second hive on its own port, with its own worker for the same model; the
    # operator's correlation id reaches the hive with the spawn.
    h2 = start_hive(processes, queen, "h2", tmp_path / "h2")
    cid = "6d1f0c2a-9b3e-4f5a-8c7d-0e1f2a3b4c5d"
    spawn = httpx.post(
        queen.url + "/v2/workers",
        json={"model": model, "hive_id": "h2"},
        headers={"X-Correlation-ID": cid},
    )
    assert spawn.status_code == 202, spawn.text
    assert spawn.headers["x-correlation-id"] == cid
    spawned = [json.loads(x) for x in h2.log().splitlines() if x.startswith("{")]
    assert any(r["action"] == "worker_spawn" and r.get("correlation_id") == cid for r in spawned)
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
    # Pull through the queen: the hive's download events, each with the hive's id.
    pulled = []
    with httpx.stream(
        "POST", queen.url + "/v2/models/pull", json={"model": model}, timeout=60
    ) as r:
        assert r.status_code == 200
        pulled = data_events(list(sse_lines(r)))
    assert pulled[-1] == "[DONE]" and pulled[-2]["type"] == "end"
    assert all(e["hive_id"] == "h1" for e in pulled[:-1])
    catalog = httpx.get(queen.url + "/v2/models").json()["data"]
    assert (model, "h1") in [(m["model_ref"], m["hive_id"]) for m in catalog]
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

    # A cascading shutdown stops the hive (and its workers) and then the queen.
    assert httpx.post(queen.url + "/v2/shutdown", json={"cascade": True}).status_code == 202
    assert queen.wait_exit(30) == 0
    assert hive.wait_exit(30) == 0
    wait_until(lambda: not pid_alive(pid), timeout=10, what="worker stopped")


def test_with_a_cluster_secret_every_hop_authenticates(
    processes: Processes, tiny_model: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    def sdk_with(key: str) -> openai.OpenAI:
        sdk = openai.OpenAI(base_url=queen.url + "/v1", api_key=key, max_retries=0)
        request.addfinalizer(sdk.close)
        return sdk

    secret = tmp_path / "cluster.secret"
    secret.write_text("c" * 48)
    secret.chmod(0o600)
    env = {"RBEE_JWT_SECRET_FILE": str(secret)}
    queen = start_queen(processes, tmp_path / "queen", env=env)
    operator = {
        "Authorization": "Bearer "
        + mint_token("c" * 48, role=Role.OPERATOR, audience=Audience.QUEEN, ttl_s=300)
    }
    client_token = mint_token("c" * 48, role=Role.CLIENT, audience=Audience.QUEEN, ttl_s=300)
    start_hive(processes, queen, "h1", tmp_path / "h1", env=env, headers=operator)
    sdk = sdk_with(client_token)
    model = f"file:{tiny_model}"
    with pytest.raises(openai.PermissionDeniedError):  # file: refs are for operators
        sdk.completions.create(model=model, prompt="Hi", max_tokens=3)
    sdk = sdk_with(operator["Authorization"][7:])
    reply = sdk.completions.create(model=model, prompt="Hi", max_tokens=3)  # spawn + relay
    assert reply.choices[0].text
    client = sdk_with(client_token)
    assert model in [m.id for m in client.models.list()]
    with pytest.raises(openai.AuthenticationError):
        sdk_with("wrong" * 4).models.list()


def test_a_hive_added_by_url_that_sends_no_heartbeats_is_polled(
    processes: Processes, tiny_model: Path, tmp_path: Path
) -> None:
    # The stream waits for its worker before it commits (no keep-alive ever falls due),
    # yet the cold start is still announced with a `loading` event before `started`.
    env = {**FAST_QUEEN, "RBEE_QUEEN_COMMIT_AFTER_S": "120"}
    queen = start_queen(processes, tmp_path / "queen", env=env)
    hive = start_hive(processes, queen, "quiet", tmp_path / "quiet", register=False)
    added = httpx.post(queen.url + "/v2/hives", json={"id": "quiet", "url": hive.url})
    assert added.status_code == 201 and added.json()["state"] == "offline"
    wait_until(lambda: hive_state(queen, "quiet") == "online", timeout=10, what="polled")
    events = run_task(queen, f"file:{tiny_model}")
    assert [e["type"] for e in events[:2]] == ["loading", "started"], events[:3]
    assert events[0]["progress"] == 1.0
    assert events[-2]["type"] == "end" and started(events)["worker_id"]
    hive.proc.kill()
    wait_until(lambda: hive_state(queen, "quiet") == "stale", timeout=10, what="stale")
