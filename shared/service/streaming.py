"""An SSE response that finishes its stream on shutdown and stops it on disconnect.

Why not sse-starlette's EventSourceResponse: it ends every stream as soon as the server
begins to shut down, while rbee must let running streams finish within the drain budget.
Why not starlette's StreamingResponse: under ASGI 2.4 servers it notices a disconnect only
when a send fails, and a worker processing a long prompt sends nothing for a while.

So this response runs the body iterator and a disconnect listener side by side; a
disconnect cancels the iterator. `on_close` runs in every case, even when the body never
started, so whoever owns a slot or a job can always let it go.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Mapping, MutableMapping
from typing import Any

from starlette.responses import Response

from shared.sse import SSE_HEADERS

logger = logging.getLogger(__name__)


class SSEResponse(Response):
    """A starlette Response (so FastAPI passes it through) with its own ASGI call."""

    media_type = "text/event-stream"

    def __init__(
        self,
        stream: AsyncIterator[bytes],
        headers: Mapping[str, str] | None = None,
        status_code: int = 200,
        on_close: Callable[[], object] | None = None,
    ) -> None:
        self.stream = stream
        self.on_close = on_close
        self.status_code = status_code
        self.background = None
        merged = {"content-type": self.media_type, **SSE_HEADERS, **(headers or {})}
        self.raw_headers = [(k.lower().encode(), v.encode()) for k, v in merged.items()]

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        start = {
            "type": "http.response.start",
            "status": self.status_code,
            "headers": self.raw_headers,
        }
        sender = asyncio.create_task(self._send_all(start, send))
        listener = asyncio.create_task(_wait_for_disconnect(receive))
        try:
            await asyncio.wait({sender, listener}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sender, listener):
                task.cancel()
            results = await asyncio.gather(sender, listener, return_exceptions=True)
            await _close(self.stream)
            if self.on_close is not None:
                self.on_close()
        error = results[0]
        if isinstance(error, Exception):
            logger.error("stream failed: %r", error, extra={"action": "stream_error"})

    async def _send_all(self, start: dict[str, Any], send: Any) -> None:
        try:
            await send(start)
            async for chunk in self.stream:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:  # the client went away mid-send
            return


async def _wait_for_disconnect(receive: Any) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _close(stream: AsyncIterator[bytes]) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()
