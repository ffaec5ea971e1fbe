"""An SSE response that finishes its stream on shutdown and stops it on disconnect.

Why not sse-starlette's EventSourceResponse: it ends every stream as soon as the server
begins to shut down, while rbee must let running streams finish within the drain budget.
Why not starlette's StreamingResponse: under ASGI 2.4 servers it notices a disconnect only
when a send fails, and a worker processing a long prompt sends nothing for a while.

So this response runs the body iterator and a disconnect listener side by side; a
disconnect cancels the iterator, whose `finally` blocks release slots and cancel jobs.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Any

from shared.sse import SSE_HEADERS


class SSEResponse:
    media_type = "text/event-stream"

    def __init__(
        self,
        body: AsyncIterator[bytes],
        headers: Mapping[str, str] | None = None,
        status_code: int = 200,
    ) -> None:
        self.body = body
        self.status_code = status_code
        merged = {"content-type": self.media_type, **SSE_HEADERS, **(headers or {})}
        self.raw_headers = [(k.lower().encode(), v.encode()) for k, v in merged.items()]

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        stream = asyncio.create_task(self._stream(send))
        listener = asyncio.create_task(self._wait_for_disconnect(receive))
        try:
            await asyncio.wait({stream, listener}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (stream, listener):
                task.cancel()
            await asyncio.gather(stream, listener, return_exceptions=True)
            await _close(self.body)
        if stream.done() and not stream.cancelled() and stream.exception() is None:
            try:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            except OSError:
                pass

    async def _stream(self, send: Any) -> None:
        try:
            async for chunk in self.body:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except OSError:  # the client went away mid-send
            return

    @staticmethod
    async def _wait_for_disconnect(receive: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return


async def _close(body: AsyncIterator[bytes]) -> None:
    aclose = getattr(body, "aclose", None)
    if aclose is not None:
        await aclose()
