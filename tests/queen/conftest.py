"""In-process queen apps (ASGITransport + LifespanManager) for finite responses."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from queen_rbee.app import create_app
from queen_rbee.settings import QueenSettings

QueenFactory = Callable[..., Awaitable[httpx.AsyncClient]]


@asynccontextmanager
async def running_app(
    data_dir: Path, **overrides: Any
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    settings = QueenSettings.load(data_dir=data_dir, **overrides)
    app = create_app(settings)
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://queen") as client:
            yield app, client


@asynccontextmanager
async def running_queen(data_dir: Path, **overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with running_app(data_dir, **overrides) as (_, client):
        yield client


@pytest.fixture
async def queen(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with running_queen(tmp_path / "queen") as client:
        yield client


def heartbeat(
    url: str = "http://127.0.0.1:9",
    workers: list[dict[str, Any]] | None = None,
    models: list[str] | None = None,
) -> dict[str, Any]:
    return {"url": url, "workers": workers or [], "models": models or []}


def assert_envelope(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == code, error
    assert error["correlation_id"] == response.headers["x-correlation-id"]
    assert 10 <= len(error["message"]) <= 500
    expected_type = {401: "authentication_error", 403: "permission_error"}.get(
        status, "server_error" if status >= 500 else "invalid_request_error"
    )
    assert error["type"] == expected_type
    return error
