"""The token path: one aiohttp session to every worker, and the byte pumps.

Why aiohttp: plain `httpx.AsyncClient` was measured by peers to collapse under hundreds of
concurrent streams; aiohttp's connector holds thousands. The connector limit comes from
settings (default 4096), there is no read timeout (a worker may think for long; our own
deadline bounds every call), and bodies are neither decompressed nor re-encoded: the
worker's SSE bytes go to the client exactly as they came, chunk by chunk, with one tail
check per chunk so that a stream that breaks off still ends with a proper error event.

What counts as the first byte: a worker opens a stream with a preamble that carries no
output (the native `started` event, the chat role delta), sent before it processes the
prompt. :func:`read_first` keeps that preamble back until the first event with output
(a token, a finish, an error, `[DONE]`), so a worker that dies while processing a long
prompt has still sent the client nothing and the request fails over to another worker.

Cancellation: a pump that ends before the worker's `[DONE]` (client gone, DELETE, deadline)
closes its upstream connection, which stops the worker's generation, and also sends
`DELETE /v1/inference/{job_id}` so the slot frees even if the close is not noticed at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Protocol

import aiohttp

from queen_rbee.dispatcher import Lease
from shared import correlation
from shared.errors import DeadlineExceeded, RbeeError, WorkerFailed
from shared.sse import DONE, encode_data

logger = logging.getLogger(__name__)

TransportErrors = (aiohttp.ClientError, OSError, asyncio.IncompleteReadError)


class Upstream:
    """Owner of the aiohttp session; opened and closed by the app's lifespan."""

    def __init__(self, max_connections: int) -> None:
        self.max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def open(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=self.max_connections, limit_per_host=0, keepalive_timeout=30
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=None),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding"),
        )

    async def aclose(self) -> None:
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "Upstream.open() was not called"
        return self._session

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> aiohttp.ClientResponse:
        return await self.session.post(url, data=body, headers=headers)

    def cancel_soon(self, url: str, job_id: str, headers: dict[str, str]) -> None:
        """Fire-and-forget cancel of a job at its worker; tracked so shutdown awaits it."""
        task = asyncio.create_task(self.cancel(url, job_id, headers))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def cancel(self, url: str, job_id: str, headers: dict[str, str]) -> None:
        try:
            async with asyncio.timeout(5):
                response = await self.session.delete(
                    f"{url}/v1/inference/{job_id}", headers=headers
                )
                response.release()
        except (*TransportErrors, TimeoutError) as exc:
            logger.info(
                "cancel not delivered: %s",
                type(exc).__name__,
                extra={"action": "cancel", "job_id": job_id},
            )


@dataclass
class Opened:
    """An upstream stream that produced its first bytes; owns the lease until closed."""

    response: aiohttp.ClientResponse
    first: bytes
    lease: Lease
    job_id: str
    overhead_ms: float
    arrived: float
    finished: bool = False
    expired: bool = False

    def close(self, upstream: Upstream, headers: dict[str, str]) -> None:
        """Release everything; a stream cut short also cancels the worker's job."""
        if not self.finished:
            self.response.close()
            upstream.cancel_soon(self.lease.url, self.job_id, headers)
        else:
            self.response.release()
        self.lease.release()


PREAMBLE_LIMIT = 64 * 1024  # a preamble is one small event; more than this is output


async def read_first(response: aiohttp.ClientResponse) -> bytes:
    """The worker's first bytes with output in them, preamble included.

    b"" when the stream ended before any output. Only SSE is read past its preamble; a
    JSON answer's first chunk is returned as is.
    """
    first = await response.content.readany()
    if response.content_type != "text/event-stream":
        return first
    while first and only_preamble(first) and len(first) < PREAMBLE_LIMIT:
        more = await response.content.readany()
        if not more:
            return b""
        first += more
    return first


def only_preamble(data: bytes) -> bool:
    """True while `data` holds nothing but preamble events, comments and a partial event."""
    *complete, _partial = data.split(b"\n\n")
    return all(_is_preamble(event) for event in complete)


def _is_preamble(event: bytes) -> bool:
    payload = b"".join(
        line.removeprefix(b"data:").strip()
        for line in event.splitlines()
        if line.startswith(b"data:")
    )
    if not payload:
        return True  # comments only
    try:
        parsed = json.loads(payload)
    except ValueError:
        return False  # `[DONE]` and anything unexpected: output
    if not isinstance(parsed, dict):
        return False
    if parsed.get("type") == "started":
        return True
    choices = parsed.get("choices")
    return (
        isinstance(choices, list)
        and bool(choices)
        and all(_is_role_only(choice) for choice in choices)
    )


def _is_role_only(choice: object) -> bool:
    if not isinstance(choice, dict) or choice.get("finish_reason") is not None:
        return False
    delta = choice.get("delta")
    return isinstance(delta, dict) and not delta.get("content") and "role" in delta


def openai_error_event(exc: RbeeError) -> bytes:
    return encode_data(exc.envelope(correlation.current())) + DONE


def native_error_event(exc: RbeeError) -> bytes:
    event = {
        "type": "error",
        "code": exc.code,
        "message": exc.message,
        "correlation_id": correlation.current(),
    }
    return encode_data(event) + DONE


class _Observer(Protocol):
    def observe(self, amount: float) -> None: ...


@dataclass
class StreamStats:
    itl: _Observer
    ttft_s: float | None = None


async def pump_bytes(
    opened: Opened,
    on_error: Callable[[RbeeError], bytes],
    stats: StreamStats,
) -> AsyncIterator[bytes]:
    """The worker's bytes, untouched; an upstream that breaks off ends with an error event."""
    first = opened.first
    stats.ttft_s = time.perf_counter() - opened.arrived
    yield first
    tail = first[-16:]
    last = time.perf_counter()
    observe = stats.itl.observe
    try:
        async for chunk in opened.response.content.iter_any():
            yield chunk
            now = time.perf_counter()
            observe(now - last)
            last = now
            tail = (tail + chunk)[-16:]
    except TransportErrors:
        pass
    if tail.endswith(DONE):
        opened.finished = True
        return
    if opened.expired:
        yield _separator(tail) + on_error(DeadlineExceeded())
        return
    logger.warning(
        "worker stream broke off", extra={"action": "relay", "worker_id": opened.lease.worker_id}
    )
    yield _separator(tail) + on_error(
        WorkerFailed("The worker stopped in the middle of the stream.")
    )


def _separator(tail: bytes) -> bytes:
    return b"" if not tail or tail.endswith(b"\n\n") else b"\n\n"


async def pump_native(
    opened: Opened,
    started: bytes,
    stats: StreamStats,
    on_end: Callable[[dict[str, object]], None],
) -> AsyncIterator[bytes]:
    """Native events: ours `started` first, the worker's own `started` dropped, rest as is."""
    yield started
    buffer = b""
    async for chunk in pump_bytes(opened, native_error_event, stats):
        buffer += chunk
        events = buffer.split(b"\n\n")
        buffer = events.pop()
        out = [e + b"\n\n" for e in events if e and not _is_started(e)]
        for event in out:
            if b'"type":"end"' in event or b'"type": "end"' in event:
                _parse_end(event, on_end)
        if out:
            yield b"".join(out)
    if buffer:
        yield buffer


def _is_started(event: bytes) -> bool:
    return b'"type":"started"' in event or b'"type": "started"' in event


def _parse_end(event: bytes, on_end: Callable[[dict[str, object]], None]) -> None:
    try:
        payload = json.loads(event.removeprefix(b"data:").strip())
    except ValueError:
        return
    if isinstance(payload, dict):
        on_end(payload)
