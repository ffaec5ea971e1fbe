"""Pure ASGI guard: bodies over the limit get 413 PAYLOAD_TOO_LARGE before parsing.

A declared Content-Length is checked up front. A chunked body (no length) is read here, up
to the limit, and replayed to the app: it is at most the limit, and FastAPI would read it
whole anyway.
"""

from __future__ import annotations

from typing import Any

from shared.auth import error_response_messages
from shared.errors import PayloadTooLarge


class BodyLimitMiddleware:
    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "DELETE"):
            await self.app(scope, receive, send)
            return
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if declared is not None:
            if declared.isdigit() and int(declared) > self.max_bytes:
                await self._refuse(send)
                return
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left before sending its body
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                await self._refuse(send)
                return
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            result: dict[str, Any] = await receive()
            return result

        await self.app(scope, replay, send)

    async def _refuse(self, send: Any) -> None:
        error = PayloadTooLarge(
            f"The request body is larger than the limit of {self.max_bytes} bytes."
        )
        for message in error_response_messages(error):
            await send(message)
