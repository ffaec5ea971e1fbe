"""Calls from the queen to hives: the control plane (never on the token path).

One shared httpx client with bounded timeouts; every call carries a fresh short-lived
token for the hive's audience and the current correlation id (via `shared.clients`).
Transport failures become 502 `HIVE_UNREACHABLE`; a hive's envelope becomes its typed error.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx

from shared.auth import Audience, Authenticator, Role
from shared.catalog import CatalogEntry
from shared.clients import HiveClient
from shared.errors import HiveUnreachable
from shared.hives import Heartbeat
from shared.sse import SSEEvent
from shared.workers import SpawnRequest, WorkerInfo


class Control:
    def __init__(self, authenticator: Authenticator) -> None:
        self._auth = authenticator
        self._http = httpx.AsyncClient(timeout=httpx.Timeout(30.0, connect=5.0))

    async def aclose(self) -> None:
        await self._http.aclose()

    def token_for(self, audience: Audience) -> str | None:
        return self._auth.credentials.bearer_for(audience, Role.OPERATOR)

    def hive(self, url: str) -> HiveClient:
        return HiveClient(url, token=lambda: self.token_for(Audience.HIVE), client=self._http)

    async def spawn(self, url: str, request: SpawnRequest) -> WorkerInfo:
        try:
            return await self.hive(url).spawn(request)
        except httpx.HTTPError as exc:
            raise _unreachable(url, exc) from None

    async def worker(self, url: str, worker_id: str) -> WorkerInfo:
        try:
            body = await self.hive(url).request("GET", f"/v1/workers/{worker_id}")
        except httpx.HTTPError as exc:
            raise _unreachable(url, exc) from None
        return WorkerInfo.model_validate(body)

    async def models(self, url: str) -> list[CatalogEntry]:
        try:
            return await self.hive(url).models()
        except httpx.HTTPError as exc:
            raise _unreachable(url, exc) from None

    async def delete_model(self, url: str, model_id: str) -> None:
        try:
            await self.hive(url).delete_model(model_id)
        except httpx.HTTPError as exc:
            raise _unreachable(url, exc) from None

    async def shutdown(self, url: str) -> None:
        try:
            await self.hive(url).shutdown()
        except httpx.HTTPError as exc:
            raise _unreachable(url, exc) from None

    async def snapshot(self, url: str) -> Heartbeat:
        """What a heartbeat would say, asked of the hive itself."""
        hive = self.hive(url)
        try:
            capabilities = await hive.capabilities()
            workers = await hive.workers()
            catalog = await hive.models()
        except httpx.HTTPError as exc:
            raise _unreachable(url, exc) from None
        models = {m.model_ref for m in catalog} | {m.alias for m in catalog if m.alias}
        return Heartbeat(url=url, workers=workers, capabilities=capabilities, models=sorted(models))

    async def call(self, url: str, method: str, path: str, **kwargs: object) -> object:
        try:
            return await self.hive(url).request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise _unreachable(url, exc) from None

    async def healthy(self, url: str, wait_s: float = 2.0) -> bool:
        try:
            response = await self._http.get(url + "/health", timeout=wait_s)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    @asynccontextmanager
    async def stream(
        self, url: str, path: str, body: dict[str, object]
    ) -> AsyncIterator[AsyncIterator[SSEEvent]]:
        try:
            async with self.hive(url).stream("POST", path, json=body) as events:
                yield events
        except httpx.HTTPError as exc:
            raise _unreachable(url, exc) from None


def _unreachable(url: str, exc: httpx.HTTPError) -> HiveUnreachable:
    return HiveUnreachable(f"The hive at {url} did not answer ({type(exc).__name__}).")
