"""Bad input at the worker: always the envelope with the right status, never a 422/500.

In-process (ASGITransport) against the real app with the real tiny model: these are
finite responses, so buffering does not matter here.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager

from llm_worker.app import create_app
from llm_worker.settings import WorkerSettings

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
NATIVE = "/v1/inference"
MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture
async def client(tiny_model: Path, rbee_home: Path) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(WorkerSettings.load(model=tiny_model, max_body_bytes=64 * 1024))
    async with (
        LifespanManager(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://worker") as http,
    ):
        for _ in range(200):
            if (await http.get("/v1/ready")).status_code == 200:
                break
            await asyncio.sleep(0.01)
        yield http


CASES: list[tuple[str, Any, int, str, str | None]] = [
    (CHAT, {"model": "m"}, 400, "VALIDATION_ERROR", "messages"),
    (CHAT, {"model": "m", "messages": []}, 400, "VALIDATION_ERROR", "messages"),
    (CHAT, {"model": "m", "messages": "hi"}, 400, "VALIDATION_ERROR", "messages"),
    (
        CHAT,
        {"model": "m", "messages": [{"role": "wizard", "content": "x"}]},
        400,
        "VALIDATION_ERROR",
        "messages.0.role",
    ),
    (
        CHAT,
        {"model": "m", "messages": MESSAGES, "temperature": 2.5},
        400,
        "VALIDATION_ERROR",
        "temperature",
    ),
    (CHAT, {"model": "m", "messages": MESSAGES, "top_p": -0.1}, 400, "VALIDATION_ERROR", "top_p"),
    (CHAT, {"model": "m", "messages": MESSAGES, "n": 2}, 400, "VALIDATION_ERROR", "n"),
    (
        CHAT,
        {"model": "m", "messages": MESSAGES, "stop": ["a", "b", "c", "d", "e"]},
        400,
        "VALIDATION_ERROR",
        "stop",
    ),
    (
        CHAT,
        {"model": "m", "messages": MESSAGES, "stop": ["x" * 101]},
        400,
        "VALIDATION_ERROR",
        "stop",
    ),
    (
        CHAT,
        {"model": "m", "messages": MESSAGES, "presence_penalty": 3},
        400,
        "VALIDATION_ERROR",
        "presence_penalty",
    ),
    (CHAT, {"model": "m", "messages": MESSAGES, "seed": "abc"}, 400, "VALIDATION_ERROR", "seed"),
    (CHAT, {"model": "m", "messages": MESSAGES, "top_k": -1}, 400, "VALIDATION_ERROR", "top_k"),
    (
        CHAT,
        {"model": "m", "messages": MESSAGES, "max_tokens": 0},
        400,
        "VALIDATION_ERROR",
        "max_tokens",
    ),
    (
        CHAT,
        {"model": "m", "messages": MESSAGES, "max_tokens": 10**9},
        400,
        "CONTEXT_LENGTH_EXCEEDED",
        "max_tokens",
    ),
    (
        COMPLETIONS,
        {"model": "m", "prompt": "word " * 5000},
        400,
        "CONTEXT_LENGTH_EXCEEDED",
        "prompt",
    ),
    (COMPLETIONS, {"model": "m", "prompt": ["a", "b"]}, 400, "VALIDATION_ERROR", "prompt"),
    (COMPLETIONS, {"prompt": "x"}, 400, "VALIDATION_ERROR", "model"),
    (COMPLETIONS, [1, 2, 3], 400, "VALIDATION_ERROR", None),
    (NATIVE, {"prompt": "x", "messages": MESSAGES}, 400, "VALIDATION_ERROR", "prompt"),
    (NATIVE, {"max_tokens": 3}, 400, "VALIDATION_ERROR", "prompt"),
    (NATIVE, {"prompt": "x", "job_id": "../../etc"}, 400, "VALIDATION_ERROR", "job_id"),
    (NATIVE, {"prompt": "x", "unknown": 1}, 400, "VALIDATION_ERROR", "unknown"),
    ("/v1/embeddings", {"model": "m", "input": ""}, 400, "VALIDATION_ERROR", "input"),
    (
        "/v1/embeddings",
        {"model": "m", "input": "x", "encoding_format": 1},
        400,
        "VALIDATION_ERROR",
        "encoding_format",
    ),
]


@pytest.mark.parametrize(("path", "body", "status", "code", "param"), CASES)
async def test_bad_bodies(
    client: httpx.AsyncClient, path: str, body: Any, status: int, code: str, param: str | None
) -> None:
    response = await client.post(path, json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert error["param"] == param
    assert 10 <= len(error["message"]) <= 500
    assert error["correlation_id"] == response.headers["x-correlation-id"]
    assert "Traceback" not in response.text


async def test_raw_garbage_bodies(client: httpx.AsyncClient) -> None:
    for raw in (b"{not json", b"\xff\xfe\x00garbage", b""):
        response = await client.post(
            CHAT, content=raw, headers={"content-type": "application/json"}
        )
        assert response.status_code == 400, raw
        assert response.json()["error"]["code"] == "VALIDATION_ERROR"


async def test_oversized_body_is_413(client: httpx.AsyncClient) -> None:
    response = await client.post(COMPLETIONS, json={"model": "m", "prompt": "x" * 70_000})
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(100):
            yield b"x" * 1024

    chunked = await client.post(COMPLETIONS, content=chunks())
    assert chunked.status_code == 413


async def test_control_characters_are_not_echoed(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/nothing%1B%5B31mhere")
    assert response.status_code == 404
    assert "\x1b" not in response.json()["error"]["message"]


async def test_unknown_method_and_route(client: httpx.AsyncClient) -> None:
    assert (await client.get(NATIVE)).json()["error"]["code"] == "METHOD_NOT_ALLOWED"
    assert (await client.get("/v9/x")).json()["error"]["code"] == "NOT_FOUND"


async def test_injection_strings_are_just_text(client: httpx.AsyncClient) -> None:
    body = {"model": "'; DROP TABLE x; --", "prompt": "$(rm -rf /) <script>", "max_tokens": 3}
    response = await client.post(COMPLETIONS, json=body)
    assert response.status_code == 200
    assert response.json()["model"] == body["model"]
