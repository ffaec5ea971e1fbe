"""Typed async client of the queen's public and management API (used by the `rbee` CLI)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from shared.clients import ServiceClient
from shared.sse import SSEEvent


class QueenClient(ServiceClient):
    async def health(self) -> dict[str, Any]:
        body: dict[str, Any] = await self.request("GET", "/health")
        return body

    async def data(self, path: str) -> list[dict[str, Any]]:
        body = await self.request("GET", path)
        items: list[dict[str, Any]] = body["data"]
        return items

    async def hives(self) -> list[dict[str, Any]]:
        return await self.data("/v2/hives")

    async def workers(self) -> list[dict[str, Any]]:
        return await self.data("/v2/workers")

    async def models(self) -> list[dict[str, Any]]:
        return await self.data("/v2/models")

    async def add_hive(self, body: dict[str, Any]) -> dict[str, Any]:
        created: dict[str, Any] = await self.request("POST", "/v2/hives", json=body)
        return created

    async def remove_hive(self, hive_id: str) -> None:
        await self.request("DELETE", f"/v2/hives/{hive_id}")

    async def start_hive(self, hive_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("POST", f"/v2/hives/{hive_id}/start")
        return result

    async def stop_hive(self, hive_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("POST", f"/v2/hives/{hive_id}/stop")
        return result

    async def remove_model(self, model_id: str, hive_id: str | None = None) -> None:
        params = {"hive_id": hive_id} if hive_id else None
        await self.request("DELETE", f"/v2/models/{model_id}", params=params)

    async def stop_worker(self, worker_id: str) -> None:
        await self.request("DELETE", f"/v2/workers/{worker_id}")

    async def shutdown(self, *, cascade: bool) -> None:
        await self.request("POST", "/v2/shutdown", json={"cascade": cascade})

    async def cancel_task(self, job_id: str) -> None:
        await self.request("DELETE", f"/v2/tasks/{job_id}")

    @asynccontextmanager
    async def task(self, body: dict[str, Any]) -> AsyncIterator[AsyncIterator[SSEEvent]]:
        async with self.stream("POST", "/v2/tasks", json=body) as events:
            yield events

    @asynccontextmanager
    async def pull(self, body: dict[str, Any]) -> AsyncIterator[AsyncIterator[SSEEvent]]:
        async with self.stream("POST", "/v2/models/pull", json=body) as events:
            yield events
