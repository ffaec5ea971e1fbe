"""Correlation ids: one per request, reused from `X-Correlation-ID` when it is a UUID.

The id lives in a context variable for the duration of the request, so logs, error
envelopes and outgoing calls to the next hop all carry the same one. The middleware is
pure ASGI so the variable survives into streaming bodies.
"""

from __future__ import annotations

import uuid
from contextvars import ContextVar
from typing import Any

HEADER = "X-Correlation-ID"
_HEADER_BYTES = HEADER.lower().encode()

correlation_id: ContextVar[str | None] = ContextVar("correlation_id", default=None)

Scope = dict[str, Any]
Message = dict[str, Any]


def valid_or_new(candidate: str | None) -> str:
    """`candidate` if it is a UUID (normalised), else a fresh one."""
    if candidate:
        try:
            return str(uuid.UUID(candidate))
        except ValueError:
            pass
    return str(uuid.uuid4())


def current() -> str | None:
    return correlation_id.get()


def outgoing_headers() -> dict[str, str]:
    """Headers that carry the current id to the next hop."""
    cid = correlation_id.get()
    return {HEADER: cid} if cid else {}


class CorrelationMiddleware:
    """Pure ASGI: sets the id for the request and adds it to every response."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw = next((v for k, v in scope["headers"] if k == _HEADER_BYTES), None)
        cid = valid_or_new(raw.decode("latin-1") if raw else None)
        scope.setdefault("state", {})["correlation_id"] = cid
        token = correlation_id.set(cid)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", []) if h[0] != _HEADER_BYTES]
                headers.append((_HEADER_BYTES, cid.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            correlation_id.reset(token)
