"""Serving one inference request: place it, open the worker, fail over, relay, clean up.

The sequence for every request (OpenAI or native, streaming or not):

1. `open`: lease a worker from the dispatcher (which may queue or cold start), POST the
   request to it and wait for its first output (a preamble such as the chat role delta
   is held back with it: :func:`queen_rbee.relay.read_first`, so a worker that dies
   while processing the prompt is still invisible). Anything that fails before that
   (connection refused, a 5xx, a stream that closes empty) puts the worker in quarantine
   and tries another one, at most twice more; a busy or loading worker is retried after a
   short backoff without counting as a failover. A 4xx is the client's fault and is
   answered as is.
2. Streaming: if `open` finishes within `commit_after_s` its status decides the response
   (an error keeps its HTTP status). A longer wait commits 200 and sends keep-alives
   (comments; native `queued`/`loading` events while queued or cold starting, comments
   while the worker processes the prompt) until the worker is open; an error after that
   point is an error event followed by `[DONE]`. A native stream served by a cold start
   gets at least one `loading` event before `started`, however fast the start was.
3. The relay (:mod:`queen_rbee.relay`) passes the worker's bytes through; its `finally`
   releases the lease and cancels the worker's job when the stream did not finish.

Deadlines: `X-Request-Deadline` or the default; `open` runs under `asyncio.timeout_at`,
and a stream gets a timer that closes the upstream at the deadline (no per-chunk timer).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from fastapi import Request
from starlette.responses import Response

from queen_rbee.control import Control
from queen_rbee.dispatcher import Dispatcher, Lease, WaitStatus
from queen_rbee.jobs import Job, Jobs
from queen_rbee.metrics import QueenMetrics
from queen_rbee.relay import (
    Opened,
    StreamStats,
    TransportErrors,
    Upstream,
    native_error_event,
    openai_error_event,
    pump_bytes,
    pump_native,
    read_first,
)
from queen_rbee.settings import QueenSettings
from shared import correlation
from shared.auth import Audience
from shared.errors import (
    AllSlotsBusy,
    DeadlineExceeded,
    RbeeError,
    ValidationError,
    WorkerFailed,
    WorkerLoading,
    error_from_envelope,
)
from shared.service.streaming import SSEResponse
from shared.sse import DONE, encode_comment, encode_data

logger = logging.getLogger(__name__)

MAX_FAILOVERS = 2
DEADLINE_HEADER = "X-Request-Deadline"


@dataclass
class Call:
    """One request as the relay sees it: where it goes and what it carries."""

    path: str
    model: str
    body: bytes
    deadline_header: str
    deadline: float  # event-loop time
    native: bool = False
    hive_id: str | None = None
    job_id: str = field(default_factory=lambda: "job-" + uuid.uuid4().hex)
    arrived: float = field(default_factory=time.perf_counter)
    waited_s: float = 0.0
    leased: bool = False  # holds a worker: waiting for its first output, not in a queue


@dataclass
class Waiting(WaitStatus):
    """The dispatcher's wait status, and whether this stream sent its `loading` event."""

    loading_sent: bool = False


def parse_deadline(header: str | None, default_s: float) -> tuple[str, float]:
    """(header to pass on, loop time of the deadline); never extended."""
    loop = asyncio.get_running_loop()
    now = datetime.now(UTC)
    if not header:
        when = now.timestamp() + default_s
        text = datetime.fromtimestamp(when, UTC).isoformat().replace("+00:00", "Z")
        return text, loop.time() + default_s
    try:
        parsed = datetime.fromisoformat(
            header.strip().replace("Z", "+00:00").replace("z", "+00:00")
        )
    except ValueError:
        raise ValidationError(
            f"The {DEADLINE_HEADER} header is not an RFC 3339 timestamp.", param=DEADLINE_HEADER
        ) from None
    if parsed.tzinfo is None:
        raise ValidationError(
            f"The {DEADLINE_HEADER} header needs a time zone offset.", param=DEADLINE_HEADER
        )
    remaining = (parsed - now).total_seconds()
    if remaining <= 0:
        raise DeadlineExceeded("The request's deadline had already passed when it arrived.")
    return header.strip(), loop.time() + remaining


class Inference:
    def __init__(
        self,
        settings: QueenSettings,
        dispatcher: Dispatcher,
        upstream: Upstream,
        control: Control,
        jobs: Jobs,
        metrics: QueenMetrics,
    ) -> None:
        self.settings = settings
        self.dispatcher = dispatcher
        self.upstream = upstream
        self.control = control
        self.jobs = jobs
        self.metrics = metrics

    # opening -------------------------------------------------------------------------

    def worker_headers(self, call: Call | None = None) -> dict[str, str]:
        headers = {"Content-Type": "application/json", **correlation.outgoing_headers()}
        token = self.control.token_for(Audience.WORKER)
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if call is not None:
            headers["X-Rbee-Job-Id"] = call.job_id
            headers[DEADLINE_HEADER] = call.deadline_header
        return headers

    async def open(self, call: Call, status: WaitStatus, job: Job) -> Opened:
        async with asyncio.timeout_at(call.deadline):
            return await self._open(call, status, job)

    async def _open(self, call: Call, status: WaitStatus, job: Job) -> Opened:
        excluded: set[str] = set()
        failovers = 0
        backoff = 0.05
        while True:
            waited = time.perf_counter()
            lease = await self.dispatcher.acquire(
                call.model, status, excluded=excluded, hive_id=call.hive_id
            )
            call.waited_s += time.perf_counter() - waited
            job.worker_url, call.leased = lease.url, True
            try:
                return await self._try(call, lease)
            except (AllSlotsBusy, WorkerLoading):
                call.leased = False
                await asyncio.sleep(backoff)
                backoff = min(1.0, backoff * 2)
            except WorkerFailed as exc:
                call.leased = False
                excluded.add(lease.worker_id)
                self.dispatcher.quarantine(lease.worker_id)
                failovers += 1
                logger.warning(
                    "worker failed before the first byte: %s",
                    exc.message,
                    extra={
                        "action": "failover",
                        "worker_id": lease.worker_id,
                        "job_id": call.job_id,
                    },
                )
                if failovers > MAX_FAILOVERS:
                    raise
                self.metrics.failovers.labels(call.model).inc()

    async def _try(self, call: Call, lease: Lease) -> Opened:
        """POST to the worker and read its first output; the lease is ours until then."""
        overhead = (time.perf_counter() - call.arrived - call.waited_s) * 1000
        try:
            response = await self.upstream.post(
                lease.url + call.path, call.body, self.worker_headers(call)
            )
        except TransportErrors as exc:
            lease.release()
            raise WorkerFailed(f"The worker did not answer ({type(exc).__name__}).") from None
        except asyncio.CancelledError:
            self._abandon(call, lease)
            raise
        except BaseException:
            lease.release()
            raise
        try:
            if response.status != 200:
                raise self._upstream_error(response.status, await response.read())
            first = await read_first(response)
            if not first:
                raise WorkerFailed("The worker closed the stream before its first token.")
        except TransportErrors as exc:
            response.close()
            lease.release()
            raise WorkerFailed(f"The worker broke off ({type(exc).__name__}).") from None
        except asyncio.CancelledError:  # client gone, DELETE or deadline: mid-prompt maybe
            response.close()
            self._abandon(call, lease)
            raise
        except BaseException:
            response.close()
            lease.release()
            raise
        self.metrics.overhead.labels(call.model).observe(overhead / 1000)
        self.metrics.queue_wait.labels(call.model).observe(call.waited_s)
        return Opened(response, first, lease, call.job_id, overhead, call.arrived)

    def _abandon(self, call: Call, lease: Lease) -> None:
        """Give up a worker that may be running the job: closing alone may go unnoticed."""
        lease.release()
        self.upstream.cancel_soon(lease.url, call.job_id, self.worker_headers())

    @staticmethod
    def _upstream_error(status: int, body: bytes) -> RbeeError:
        try:
            parsed: Any = json.loads(body)
        except ValueError:
            parsed = None
        error = error_from_envelope(status, parsed)
        if status >= 500 and not isinstance(error, (AllSlotsBusy, WorkerLoading)):
            if error.code not in ("DEADLINE_EXCEEDED",):
                return WorkerFailed(f"The worker answered HTTP {status} ({error.code}).")
        return error

    # answers -------------------------------------------------------------------------

    async def complete(self, call: Call, request: Request) -> Response:
        """A non-streaming answer; a client that leaves cancels the work."""
        job = self.jobs.add(call.job_id)
        task: asyncio.Task[Response] = asyncio.create_task(self._complete(call, job))
        job.task = task
        watcher = asyncio.create_task(_disconnected(request))
        try:
            await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
            if not task.done():
                task.cancel()
                self.metrics.cancellations.labels(call.model).inc()
            await asyncio.gather(task, watcher, return_exceptions=True)
            self.jobs.drop(call.job_id)
        if task.cancelled():
            return Response(status_code=499)
        return task.result()

    async def _complete(self, call: Call, job: Job) -> Response:
        try:
            async with asyncio.timeout_at(call.deadline):
                opened = await self._open(call, WaitStatus(), job)
                try:
                    body = opened.first + await opened.response.read()
                    opened.finished = True
                except TransportErrors:
                    raise WorkerFailed("The worker broke off while answering.") from None
                finally:
                    opened.close(self.upstream, self.worker_headers())
        except TimeoutError:
            raise DeadlineExceeded() from None
        self._count_usage(call.model, body)
        self.metrics.e2e.labels(call.model).observe(time.perf_counter() - call.arrived)
        return Response(
            body,
            media_type=opened.response.content_type or "application/json",
            headers=self._headers(call, opened.overhead_ms),
        )

    def _count_usage(self, model: str, body: bytes) -> None:
        try:
            usage = json.loads(body).get("usage") or {}
            self.metrics.tokens_in.labels(model).inc(int(usage.get("prompt_tokens", 0)))
            self.metrics.tokens_out.labels(model).inc(int(usage.get("completion_tokens", 0)))
        except (ValueError, AttributeError, TypeError):
            pass

    def _headers(self, call: Call, overhead_ms: float) -> dict[str, str]:
        return {"X-Rbee-Job-Id": call.job_id, "X-Rbee-Overhead-Ms": f"{overhead_ms:.3f}"}

    async def stream(self, call: Call) -> Response:
        job = self.jobs.add(call.job_id)
        status = Waiting()
        task: asyncio.Task[Opened] = asyncio.create_task(self.open(call, status, job))
        job.task = task
        await asyncio.wait({task}, timeout=self.settings.commit_after_s)
        if task.done():
            try:
                opened = _result(task)
            except BaseException:
                self.jobs.drop(call.job_id)
                raise
            body = self._relay(call, opened, status)
            return SSEResponse(body, headers=self._headers(call, opened.overhead_ms))
        own_ms = (time.perf_counter() - call.arrived - call.waited_s) * 1000
        return SSEResponse(self._late(call, task, status), headers=self._headers(call, own_ms))

    async def _late(
        self, call: Call, task: asyncio.Task[Opened], status: Waiting
    ) -> AsyncIterator[bytes]:
        """Keep-alives while the request waits, then the relay (or one error event)."""
        on_error = native_error_event if call.native else openai_error_event
        try:
            while not task.done():
                yield self._waiting(call, status)
                await asyncio.wait({task}, timeout=self.settings.keepalive_interval_s)
            try:
                opened = _result(task)
            except RbeeError as exc:
                yield on_error(exc)
                return
            except asyncio.CancelledError:  # DELETE /v2/tasks while waiting
                yield self._cancelled_end(call)
                return
            async for chunk in self._relay(call, opened, status):
                yield chunk
        finally:
            if not task.done():
                task.cancel()
                self.metrics.cancellations.labels(call.model).inc()
                await asyncio.gather(task, return_exceptions=True)
            self.jobs.drop(call.job_id)

    def _waiting(self, call: Call, status: Waiting) -> bytes:
        if call.leased:  # the worker is processing the prompt: nothing to report
            return encode_comment("processing prompt")
        if status.stage:
            comment = encode_comment(f"loading stage={status.stage}")
            event: dict[str, object] = {
                "type": "loading",
                "stage": status.stage,
                "progress": status.progress,
            }
            status.loading_sent = True
        else:
            comment = encode_comment(f"queued position={status.position}")
            event = {"type": "queued", "position": status.position}
        return encode_data(event) if call.native else comment

    @staticmethod
    def _loading_owed(status: Waiting) -> bytes:
        """The `loading` event of a cold start that ended before any keep-alive was due."""
        if status.seen_stage is None or status.loading_sent:
            return b""
        status.loading_sent = True
        return encode_data({"type": "loading", "stage": status.seen_stage, "progress": 1.0})

    @staticmethod
    def _cancelled_end(call: Call) -> bytes:
        if not call.native:
            return DONE
        end = {
            "type": "end",
            "tokens_in": 0,
            "tokens_out": 0,
            "stop_reason": "cancelled",
            "ttft_ms": 0.0,
            "decode_ms": 0.0,
        }
        return encode_data(end) + DONE

    async def _relay(self, call: Call, opened: Opened, status: Waiting) -> AsyncIterator[bytes]:
        stats = StreamStats(itl=self.metrics.itl.labels(call.model))
        expired = asyncio.get_running_loop().call_at(call.deadline, self._expire, opened)
        try:
            if call.native:
                started = self._loading_owed(status) + encode_data(
                    {
                        "type": "started",
                        "job_id": call.job_id,
                        "worker_id": opened.lease.worker_id,
                        "model": call.model,
                    }
                )
                pump = pump_native(opened, started, stats, self._on_end(call.model))
            else:
                pump = pump_bytes(opened, openai_error_event, stats)
            async for chunk in pump:
                yield chunk
        finally:
            expired.cancel()
            if not opened.finished:
                self.metrics.cancellations.labels(call.model).inc()
            opened.close(self.upstream, self.worker_headers())
            self.jobs.drop(call.job_id)
            if stats.ttft_s is not None:
                self.metrics.ttft.labels(call.model).observe(stats.ttft_s)
            self.metrics.e2e.labels(call.model).observe(time.perf_counter() - call.arrived)

    @staticmethod
    def _expire(opened: Opened) -> None:
        opened.expired = True
        opened.response.close()

    def _on_end(self, model: str) -> Callable[[dict[str, object]], None]:
        def record(end: dict[str, object]) -> None:
            for key, counter in (
                ("tokens_in", self.metrics.tokens_in),
                ("tokens_out", self.metrics.tokens_out),
            ):
                value = end.get(key)
                if isinstance(value, int):
                    counter.labels(model).inc(value)

        return record

    async def cancel(self, job_id: str) -> None:
        """`DELETE /v2/tasks/{id}`: idempotent; unknown and finished jobs are fine."""
        job = self.jobs.get(job_id)
        if job is None or job.cancelled:
            return
        job.cancelled = True
        if job.worker_url is not None:
            await self.upstream.cancel(job.worker_url, job_id, self.worker_headers())
        elif job.task is not None:
            job.task.cancel()


def _result(task: asyncio.Task[Opened]) -> Opened:
    try:
        return task.result()
    except TimeoutError:
        raise DeadlineExceeded() from None


async def _disconnected(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
