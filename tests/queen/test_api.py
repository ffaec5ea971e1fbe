"""The queen's API in process: registry, hive states, envelopes for bad input, auth."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared.auth import Audience, Role, mint_token
from tests.queen.conftest import assert_envelope, heartbeat, running_app, running_queen

TINY = "file:/models/tiny.gguf"
WORKER = {
    "id": "w1",
    "state": "idle",
    "url": "http://127.0.0.1:9",
    "model": TINY,
    "slots": {"total": 1, "busy": 0},
}


async def test_health_is_public_and_every_response_carries_a_correlation_id(
    queen: httpx.AsyncClient,
) -> None:
    response = await queen.get("/health")
    assert response.status_code == 200 and response.json()["status"] == "ok"
    cid = "5b0c6f9e-3c1a-4f7e-9a59-2d3f1c0e8a11"
    response = await queen.get("/v2/hives/nope", headers={"X-Correlation-ID": cid})
    assert response.headers["x-correlation-id"] == cid
    assert assert_envelope(response, 404, "HIVE_NOT_FOUND")["correlation_id"] == cid


async def test_heartbeats_build_the_worker_view_and_the_model_list(
    queen: httpx.AsyncClient,
) -> None:
    put = await queen.put("/v2/hives/h1", json={"url": "http://127.0.0.1:9", "version": "0.1.0"})
    assert put.status_code == 200 and put.json()["state"] == "online"
    beat = heartbeat(workers=[WORKER], models=["gemma3-270m"])
    assert (await queen.post("/v2/hives/h1/heartbeat", json=beat)).status_code == 200
    workers = (await queen.get("/v2/workers")).json()["data"]
    assert [(w["id"], w["hive_id"], w["model"], w["slots"]) for w in workers] == [
        ("w1", "h1", TINY, {"total": 1, "busy": 0})
    ]
    models = (await queen.get("/v1/models")).json()
    assert models["object"] == "list"
    assert sorted(m["id"] for m in models["data"]) == sorted(["gemma3-270m", TINY])
    # Level-triggered: the next heartbeat is the whole truth, the worker is gone.
    await queen.post("/v2/hives/h1/heartbeat", json=heartbeat(models=["gemma3-270m"]))
    assert (await queen.get("/v2/workers")).json()["data"] == []
    assert [m["id"] for m in (await queen.get("/v1/models")).json()["data"]] == ["gemma3-270m"]


async def test_hives_go_stale_then_offline_without_heartbeats(tmp_path: Path) -> None:
    async with running_queen(tmp_path, hive_stale_after_s=0.5, hive_offline_after_s=1.5) as queen:
        await queen.put("/v2/hives/h1", json={"url": "http://127.0.0.1:9", "version": "1"})
        states = []
        for _ in range(100):
            state = (await queen.get("/v2/hives/h1")).json()["state"]
            if not states or states[-1] != state:
                states.append(state)
            if state == "offline":
                break
            await asyncio.sleep(0.02)
        assert states == ["online", "stale", "offline"]
        # An offline hive's models are not offered, and inference has no capacity.
        chat = {"model": "gemma3-270m", "messages": [{"role": "user", "content": "hi"}]}
        response = await queen.post("/v1/chat/completions", json=chat)
        assert_envelope(response, 503, "NO_CAPACITY")
        assert int(response.headers["retry-after"]) >= 1


async def test_the_registry_survives_a_restart(tmp_path: Path) -> None:
    async with running_queen(tmp_path) as queen:
        assert (
            await queen.post("/v2/hives", json={"id": "h1", "url": "http://127.0.0.1:9"})
        ).status_code == 201
        await queen.put("/v2/hives/h2", json={"url": "http://127.0.0.1:10", "version": "1"})
    assert (tmp_path / "queen.db").exists()
    async with running_queen(tmp_path) as queen:
        hives = (await queen.get("/v2/hives")).json()["data"]
        assert [(h["id"], h["url"]) for h in hives] == [
            ("h1", "http://127.0.0.1:9"),
            ("h2", "http://127.0.0.1:10"),
        ]
        assert hives[1]["last_heartbeat"] is not None
        assert (await queen.delete("/v2/hives/h1")).status_code == 204
    async with running_queen(tmp_path) as queen:
        assert [h["id"] for h in (await queen.get("/v2/hives")).json()["data"]] == ["h2"]


async def test_inference_with_no_hive_online_is_503_no_capacity_at_once(
    queen: httpx.AsyncClient,
) -> None:
    chat = {"model": "gemma3-270m", "messages": [{"role": "user", "content": "hi"}]}
    for path, body in [
        ("/v1/chat/completions", chat),
        ("/v1/chat/completions", {**chat, "stream": True}),
        ("/v1/completions", {"model": "gemma3-270m", "prompt": "hi"}),
        ("/v1/embeddings", {"model": "gemma3-270m", "input": "hi"}),
        ("/v2/tasks", {"model": "gemma3-270m", "prompt": "hi"}),
    ]:
        response = await asyncio.wait_for(queen.post(path, json=body), 2)
        assert_envelope(response, 503, "NO_CAPACITY")
        assert int(response.headers["retry-after"]) >= 1


CHAT = "/v1/chat/completions"
MSGS = [{"role": "user", "content": "hi"}]
BAD_INPUT: list[tuple[str, str, Any, int, str, str | None]] = [
    ("POST", CHAT, {"model": 1, "messages": MSGS}, 400, "VALIDATION_ERROR", "model"),
    ("POST", CHAT, {"model": "tiny"}, 400, "VALIDATION_ERROR", "messages"),
    ("POST", CHAT, {"model": "tiny", "messages": "hi"}, 400, "VALIDATION_ERROR", "messages"),
    (
        "POST",
        CHAT,
        {"model": "tiny", "messages": [{"role": "god", "content": "x"}]},
        400,
        "VALIDATION_ERROR",
        "messages.0.role",
    ),
    (
        "POST",
        CHAT,
        {"model": "tiny", "messages": MSGS, "temperature": 9},
        400,
        "VALIDATION_ERROR",
        "temperature",
    ),
    (
        "POST",
        CHAT,
        {"model": "tiny", "messages": MSGS, "max_tokens": 0},
        400,
        "VALIDATION_ERROR",
        "max_tokens",
    ),
    (
        "POST",
        CHAT,
        {"model": "tiny", "messages": MSGS, "max_tokens": "lots"},
        400,
        "VALIDATION_ERROR",
        "max_tokens",
    ),
    ("POST", CHAT, {"model": "tiny", "messages": MSGS, "n": 3}, 400, "VALIDATION_ERROR", "n"),
    (
        "POST",
        CHAT,
        {"model": "tiny", "messages": MSGS, "stop": ["a"] * 5},
        400,
        "VALIDATION_ERROR",
        "stop",
    ),
    ("POST", CHAT, {"model": "no-such-model", "messages": MSGS}, 404, "MODEL_NOT_FOUND", "model"),
    ("POST", CHAT, {"model": "x; rm -rf /", "messages": MSGS}, 400, "VALIDATION_ERROR", "model"),
    ("POST", CHAT, {"model": "$(reboot)", "messages": MSGS}, 400, "VALIDATION_ERROR", "model"),
    (
        "POST",
        CHAT,
        {"model": "hf:../../etc/passwd", "messages": MSGS},
        400,
        "VALIDATION_ERROR",
        "model",
    ),
    ("POST", CHAT, {"model": "a\u0000b", "messages": MSGS}, 400, "VALIDATION_ERROR", "model"),
    ("POST", CHAT, {"model": "' OR 1=1 --", "messages": MSGS}, 400, "VALIDATION_ERROR", "model"),
    ("POST", CHAT, {"model": "m\u00e9", "messages": MSGS}, 400, "VALIDATION_ERROR", "model"),
    ("POST", CHAT, [1, 2], 400, "VALIDATION_ERROR", None),
    (
        "POST",
        "/v1/completions",
        {"model": "tiny", "prompt": ["a", "b"]},
        400,
        "VALIDATION_ERROR",
        "prompt",
    ),
    ("POST", "/v1/completions", {"model": "tiny"}, 400, "VALIDATION_ERROR", "prompt"),
    ("POST", "/v1/embeddings", {"model": "tiny", "input": ""}, 400, "VALIDATION_ERROR", "input"),
    ("POST", "/v2/tasks", {"model": "tiny", "prompt": ""}, 400, "VALIDATION_ERROR", "prompt"),
    (
        "POST",
        "/v2/tasks",
        {"model": "tiny", "prompt": "x", "evil": 1},
        400,
        "VALIDATION_ERROR",
        "evil",
    ),
    (
        "POST",
        "/v2/tasks",
        {"model": "tiny", "prompt": "x", "top_p": 2},
        400,
        "VALIDATION_ERROR",
        "top_p",
    ),
    (
        "POST",
        "/v2/tasks",
        {"model": "tiny", "prompt": "x", "hive_id": "nope"},
        404,
        "HIVE_NOT_FOUND",
        None,
    ),
    ("POST", "/v2/hives", {"id": "Bad_Id!", "url": "http://x"}, 400, "VALIDATION_ERROR", "id"),
    ("POST", "/v2/hives", {"id": "h9"}, 400, "VALIDATION_ERROR", "url"),
    ("POST", "/v2/hives", {"id": "h9", "url": "ftp://x"}, 400, "VALIDATION_ERROR", "url"),
    (
        "POST",
        "/v2/hives",
        {"id": "h9", "url": "http://x", "ssh": {"host": "x", "user": "u"}},
        400,
        "VALIDATION_ERROR",
        "url",
    ),
    ("POST", "/v2/hives", {"id": "h1", "url": "http://x:1"}, 409, "HIVE_ALREADY_EXISTS", None),
    (
        "POST",
        "/v2/hives",
        {"id": "h9", "ssh": {"host": "127.0.0.1", "port": 1, "user": "u"}},
        502,
        "HIVE_UNREACHABLE",
        None,
    ),
    (
        "POST",
        "/v2/hives",
        {"id": "h9", "ssh": {"host": "h", "user": "u", "shell": "rm"}},
        400,
        "VALIDATION_ERROR",
        "ssh.shell",
    ),
    (
        "PUT",
        "/v2/hives/h1';DROP TABLE hives;--",
        {"url": "http://x", "version": "1"},
        400,
        "VALIDATION_ERROR",
        "hive_id",
    ),
    ("PUT", "/v2/hives/h3", {"version": "1"}, 400, "VALIDATION_ERROR", "url"),
    ("POST", "/v2/hives/h1/heartbeat", {"workers": "none"}, 400, "VALIDATION_ERROR", "workers"),
    ("POST", "/v2/hives/H_1/heartbeat", {"workers": []}, 400, "VALIDATION_ERROR", "hive_id"),
    ("POST", f"/v2/hives/{'h' * 64}/heartbeat", {}, 400, "VALIDATION_ERROR", "hive_id"),
    ("GET", "/v2/hives/h1/heartbeat", None, 405, "METHOD_NOT_ALLOWED", None),
    ("POST", "/v2/hives/ghost/heartbeat", {"workers": []}, 404, "HIVE_NOT_FOUND", None),
    ("GET", "/v2/hives/ghost", None, 404, "HIVE_NOT_FOUND", None),
    ("DELETE", "/v2/hives/ghost", None, 404, "HIVE_NOT_FOUND", None),
    ("DELETE", "/v2/workers/ghost", None, 404, "WORKER_NOT_FOUND", None),
    ("POST", "/v2/workers", {"hive_id": "h1"}, 400, "VALIDATION_ERROR", "model"),
    ("POST", "/v2/workers", {"model": "tiny", "hive_id": "ghost"}, 404, "HIVE_NOT_FOUND", None),
    ("POST", "/v2/models/pull", {"model": "a|b"}, 400, "VALIDATION_ERROR", "model"),
    ("POST", "/v2/models/pull", {"model": 5}, 400, "VALIDATION_ERROR", "model"),
    ("POST", "/v2/shutdown", {"cascade": "maybe"}, 400, "VALIDATION_ERROR", "cascade"),
    ("GET", "/v3/nothing", None, 404, "NOT_FOUND", None),
    ("DELETE", "/v1/models", None, 405, "METHOD_NOT_ALLOWED", None),
]


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code", "param"),
    BAD_INPUT,
    ids=[f"{m} {p} {c}" for m, p, _, _, c, _ in BAD_INPUT],
)
async def test_bad_input_gets_the_envelope_with_the_right_status(
    queen: httpx.AsyncClient,
    method: str,
    path: str,
    body: Any,
    status: int,
    code: str,
    param: str | None,
) -> None:
    await queen.put("/v2/hives/h1", json={"url": "http://127.0.0.1:9", "version": "1"})
    await queen.post("/v2/hives/h1/heartbeat", json=heartbeat(workers=[WORKER], models=["tiny"]))
    response = await queen.request(method, path, json=body)
    error = assert_envelope(response, status, code)
    if param is not None:
        assert error["param"] == param
    assert "\x00" not in error["message"] and "Traceback" not in error["message"]


async def test_raw_bodies_that_are_not_json_are_400_and_oversized_ones_413(
    queen: httpx.AsyncClient,
) -> None:
    headers = {"content-type": "application/json"}
    for path in [
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v2/tasks",
        "/v2/hives",
        "/v2/workers",
        "/v2/models/pull",
    ]:
        for raw in [b'{"model": "\xff\xfe", "messages": []}', b"{not json", b""]:
            response = await queen.post(path, content=raw, headers=headers)
            assert_envelope(response, 400, "VALIDATION_ERROR")
        huge = b'{"model": "tiny", "prompt": "' + b"a" * (1024 * 1024 + 10) + b'"}'
        assert_envelope(
            await queen.post(path, content=huge, headers=headers), 413, "PAYLOAD_TOO_LARGE"
        )


async def test_a_bad_deadline_header_is_400_and_a_past_one_504(queen: httpx.AsyncClient) -> None:
    await queen.put("/v2/hives/h1", json={"url": "http://127.0.0.1:9", "version": "1"})
    chat = {"model": TINY, "messages": MSGS}
    bad = await queen.post(CHAT, json=chat, headers={"X-Request-Deadline": "tomorrow"})
    assert_envelope(bad, 400, "VALIDATION_ERROR")
    past = await queen.post(CHAT, json=chat, headers={"X-Request-Deadline": "2001-01-01T00:00:00Z"})
    assert_envelope(past, 504, "DEADLINE_EXCEEDED")


async def test_cancelling_an_unknown_task_is_204(queen: httpx.AsyncClient) -> None:
    assert (await queen.delete("/v2/tasks/job-unknown")).status_code == 204
    assert (await queen.delete("/v2/tasks/job-unknown")).status_code == 204


async def test_requests_are_counted_by_route_template_also_on_the_plain_heartbeat_route(
    queen: httpx.AsyncClient,
) -> None:
    await queen.put("/v2/hives/h1", json={"url": "http://127.0.0.1:9", "version": "1"})
    for _ in range(3):
        assert (await queen.post("/v2/hives/h1/heartbeat", json=heartbeat())).status_code == 200
    text = (await queen.get("/metrics")).text
    template = 'endpoint="/v2/hives/{hive_id}/heartbeat",method="POST",status="200"'
    assert f"rbee_requests_total{{{template}}} 3.0" in text
    assert "unmatched" not in text


async def test_metrics_have_the_spec_names(queen: httpx.AsyncClient) -> None:
    await queen.put("/v2/hives/h1", json={"url": "http://127.0.0.1:9", "version": "1"})
    text = (await queen.get("/metrics")).text
    for name in [
        "rbee_requests_total",
        "rbee_errors_total",
        "rbee_time_to_first_token_seconds",
        "rbee_inter_token_latency_seconds",
        "rbee_queue_wait_seconds",
        "rbee_e2e_latency_seconds",
        "rbee_queen_overhead_seconds",
        "rbee_queue_depth",
        "rbee_workers",
        "rbee_hives",
        "rbee_slots_busy",
        "rbee_slots_total",
        "rbee_gpu_memory_used_bytes",
        "rbee_gpu_memory_free_bytes",
        "rbee_tokens_in_total",
        "rbee_tokens_out_total",
        "rbee_cancellations_total",
        "rbee_failovers_total",
        "rbee_worker_restarts_total",
        "rbee_downloads_total",
        "rbee_downloaded_bytes_total",
    ]:
        assert f"# HELP {name}" in text, name
    assert 'rbee_hives{state="online"} 1.0' in text


SECRET = "s" * 40


@pytest.fixture
def jwt_secret(tmp_path: Path) -> Path:
    path = tmp_path / "jwt.secret"
    path.write_text(SECRET)
    os.chmod(path, 0o600)
    return path


async def test_roles_decide_who_may_call_what(tmp_path: Path, jwt_secret: Path) -> None:
    secret = SECRET

    def bearer(role: Role, audience: Audience = Audience.QUEEN) -> dict[str, str]:
        token = mint_token(secret, role=role, audience=audience, ttl_s=60)
        return {"Authorization": f"Bearer {token}"}

    async with running_queen(tmp_path / "q", jwt_secret_file=jwt_secret) as queen:
        assert (await queen.get("/health")).status_code == 200
        assert_envelope(await queen.get("/v1/models"), 401, "MISSING_API_KEY")
        assert_envelope(
            await queen.get("/v1/models", headers=bearer(Role.CLIENT, Audience.HIVE)),
            401,
            "INVALID_API_KEY",
        )
        assert (await queen.get("/v1/models", headers=bearer(Role.CLIENT))).status_code == 200
        assert_envelope(await queen.get("/v2/hives", headers=bearer(Role.CLIENT)), 403, "FORBIDDEN")
        reg = {"url": "http://127.0.0.1:9", "version": "1"}
        assert_envelope(
            await queen.put("/v2/hives/h1", json=reg, headers=bearer(Role.CLIENT)), 403, "FORBIDDEN"
        )
        assert (
            await queen.put("/v2/hives/h1", json=reg, headers=bearer(Role.HIVE))
        ).status_code == 200
        beat = heartbeat(workers=[WORKER])
        response = await queen.post("/v2/hives/h1/heartbeat", json=beat, headers=bearer(Role.HIVE))
        assert response.status_code == 200
        assert_envelope(await queen.get("/v2/workers", headers=bearer(Role.HIVE)), 403, "FORBIDDEN")
        assert (await queen.get("/v2/workers", headers=bearer(Role.OPERATOR))).status_code == 200
        # A client may not name a model by a file on the server's disk.
        chat = {"model": TINY, "messages": MSGS}
        forbidden = await queen.post(CHAT, json=chat, headers=bearer(Role.CLIENT))
        assert_envelope(forbidden, 403, "FORBIDDEN")


async def test_after_the_stop_signal_new_inference_gets_503_shutting_down(tmp_path: Path) -> None:
    async with running_app(tmp_path) as (app, queen):
        await queen.put("/v2/hives/h1", json={"url": "http://127.0.0.1:9", "version": "1"})
        await queen.post("/v2/hives/h1/heartbeat", json=heartbeat(workers=[WORKER]))
        app.state.on_stop_signal()
        chat = {"model": TINY, "messages": MSGS}
        assert_envelope(await queen.post(CHAT, json=chat), 503, "SHUTTING_DOWN")
        task = {"model": TINY, "prompt": "hi"}
        assert_envelope(await queen.post("/v2/tasks", json=task), 503, "SHUTTING_DOWN")
        assert (await queen.get("/health")).status_code == 200


async def test_worker_restarts_reported_by_heartbeats_are_counted(
    queen: httpx.AsyncClient,
) -> None:
    await queen.put("/v2/hives/h1", json={"url": "http://127.0.0.1:9", "version": "1"})
    await queen.post("/v2/hives/h1/heartbeat", json=heartbeat(workers=[WORKER]))
    await queen.post("/v2/hives/h1/heartbeat", json=heartbeat(workers=[{**WORKER, "restarts": 2}]))
    text = (await queen.get("/metrics")).text
    assert 'rbee_worker_restarts_total{hive_id="h1"} 2.0' in text


HIVE_WRITES = [("PUT", "/v2/hives/h1"), ("POST", "/v2/hives/h1/heartbeat")]
WRONG_TYPES: list[tuple[str, str, Any, str | None]] = [
    ("PUT", "/v2/hives/h1", {"url": 5, "version": "1"}, "url"),
    ("PUT", "/v2/hives/h1", {"url": "http://127.0.0.1:9", "version": ["1"]}, "version"),
    (
        "PUT",
        "/v2/hives/h1",
        {"url": "http://127.0.0.1:9", "version": "1", "capabilities": "big"},
        "capabilities",
    ),
    ("PUT", "/v2/hives/h1", "http://127.0.0.1:9", None),
    ("POST", "/v2/hives/h1/heartbeat", {"workers": {"id": "w1"}}, "workers"),
    ("POST", "/v2/hives/h1/heartbeat", {"workers": [{**WORKER, "slots": 2}]}, "workers.0.slots"),
    ("POST", "/v2/hives/h1/heartbeat", {"workers": [{**WORKER, "state": "?"}]}, "workers.0.state"),
    ("POST", "/v2/hives/h1/heartbeat", {"workers": [], "models": "tiny"}, "models"),
    ("POST", "/v2/hives/h1/heartbeat", [WORKER], None),
]


@pytest.mark.parametrize(("method", "path", "body", "param"), WRONG_TYPES)
async def test_hive_registration_and_heartbeat_with_wrong_types_are_400(
    queen: httpx.AsyncClient, method: str, path: str, body: Any, param: str | None
) -> None:
    await queen.put("/v2/hives/h1", json={"url": "http://127.0.0.1:9", "version": "1"})
    error = assert_envelope(await queen.request(method, path, json=body), 400, "VALIDATION_ERROR")
    if param is not None:
        assert error["param"] == param
    assert (await queen.get("/v2/hives/h1")).json()["url"] == "http://127.0.0.1:9"


@pytest.mark.parametrize(("method", "path"), HIVE_WRITES)
async def test_hive_registration_and_heartbeat_refuse_broken_and_oversized_bodies(
    queen: httpx.AsyncClient, method: str, path: str
) -> None:
    await queen.put("/v2/hives/h1", json={"url": "http://127.0.0.1:9", "version": "1"})
    headers = {"content-type": "application/json"}
    for raw in [b'{"url": "http://\xff\xfe", "version": "1"}', b"\xc3\x28", b"{not json", b""]:
        response = await queen.request(method, path, content=raw, headers=headers)
        assert_envelope(response, 400, "VALIDATION_ERROR")
    huge = b'{"url": "http://127.0.0.1:9", "version": "' + b"1" * (1024 * 1024 + 10) + b'"}'
    response = await queen.request(method, path, content=huge, headers=headers)
    assert_envelope(response, 413, "PAYLOAD_TOO_LARGE")

    async def chunks() -> Any:  # no Content-Length: the limit applies while reading
        for _ in range(1100):
            yield b" " * 1024

    response = await queen.request(method, path, content=chunks(), headers=headers)
    assert_envelope(response, 413, "PAYLOAD_TOO_LARGE")
    assert (await queen.get("/v2/hives/h1")).json()["url"] == "http://127.0.0.1:9"
