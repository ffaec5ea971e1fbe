"""Typed async clients of the three services, over httpx.

Every non-2xx answer is turned back into the :class:`RbeeError` subclass its envelope
names, so callers catch `WorkerLoading` rather than parse bodies. Streams yield parsed
events. A token source is called per request, so short-lived JWTs are minted fresh.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Self

import httpx

from shared import correlation
from shared.catalog import CatalogEntry
from shared.errors import ERRORS_BY_CODE, RbeeError, error_from_envelope
from shared.hives import Capabilities
from shared.sse import SSEEvent, iter_sse
from shared.workers import Readiness, SpawnRequest, WorkerInfo

TokenSource = Callable[[], str | None]


def _no_token() -> str | None:
    return None


def raise_for_envelope(response: httpx.Response, body: bytes) -> None:
    if response.is_success:
        return
    try:
        parsed: Any = json.loads(body)
    except ValueError:
        parsed = None
    raise error_from_envelope(response.status_code, parsed)


class ServiceClient:
    def __init__(
        self,
        base_url: str,
        *,
        token: TokenSource = _no_token,
        client: httpx.AsyncClient | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._token = token
        self._client = client or httpx.AsyncClient(timeout=httpx.Timeout(timeout))
        self._owns_client = client is None

    def headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = correlation.outgoing_headers()
        token = self._token()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return {**headers, **(extra or {})}

    async def request(self, method: str, path: str, **kwargs: Any) -> Any:
        headers = self.headers(kwargs.pop("headers", None))
        response = await self._client.request(
            method, self.base_url + path, headers=headers, **kwargs
        )
        raise_for_envelope(response, response.content)
        if response.status_code == 204 or not response.content:
            return None
        return response.json()

    @asynccontextmanager
    async def stream(
        self, method: str, path: str, **kwargs: Any
    ) -> AsyncIterator[AsyncIterator[SSEEvent]]:
        headers = self.headers(kwargs.pop("headers", None))
        timeout = kwargs.pop("timeout", httpx.Timeout(30.0, read=None))
        async with self._client.stream(
            method, self.base_url + path, headers=headers, timeout=timeout, **kwargs
        ) as response:
            if not response.is_success:
                raise_for_envelope(response, await response.aread())
            yield iter_sse(response)

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def event_error(event: dict[str, Any]) -> RbeeError:
    """The typed error of a native `error` event."""
    cls = ERRORS_BY_CODE.get(str(event.get("code")), RbeeError)
    return cls(str(event.get("message") or cls.default_message))


class WorkerClient(ServiceClient):
    async def ready(self) -> Readiness:
        response = await self._client.get(self.base_url + "/v1/ready", headers=self.headers())
        if response.status_code not in (200, 503):
            raise_for_envelope(response, response.content)
        return Readiness.model_validate(response.json())

    async def cancel(self, job_id: str) -> None:
        await self.request("DELETE", f"/v1/inference/{job_id}")

    async def shutdown(self) -> None:
        await self.request("POST", "/v1/shutdown")


class HiveClient(ServiceClient):
    async def capabilities(self) -> Capabilities:
        return Capabilities.model_validate(await self.request("GET", "/v1/capabilities"))

    async def models(self) -> list[CatalogEntry]:
        body = await self.request("GET", "/v1/models")
        return [CatalogEntry.model_validate(m) for m in body["data"]]

    async def workers(self) -> list[WorkerInfo]:
        body = await self.request("GET", "/v1/workers")
        return [WorkerInfo.model_validate(w) for w in body["data"]]

    async def spawn(self, request: SpawnRequest) -> WorkerInfo:
        body = await self.request(
            "POST", "/v1/workers/spawn", json=request.model_dump(exclude_none=True)
        )
        return WorkerInfo.model_validate(body)

    async def stop_worker(self, worker_id: str) -> None:
        await self.request("DELETE", f"/v1/workers/{worker_id}")

    async def delete_model(self, model_id: str) -> None:
        await self.request("DELETE", f"/v1/models/{model_id}")

    async def shutdown(self) -> None:
        await self.request("POST", "/v1/shutdown")
