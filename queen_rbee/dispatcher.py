"""The dispatcher: the one owner of in-flight counts, model queues and cold starts.

Every decision (which worker gets a request, whether to queue, whether to spawn) is made
by :meth:`Dispatcher.acquire` on the event loop, reading and updating the counters with no
`await` in between, so two requests can never both take a worker's last slot. Requests
that find no free slot wait on :class:`~queen_rbee.registry.Changes`, which fires when a
lease is released, a heartbeat arrives or a cold start ends; they re-run the decision
each time. The queue is bounded per model; its length counts waiting requests only.

A cold start runs as its own task (one per model at a time): pick a hive with the pure
scheduler, ask it to spawn, poll the hive until the worker is ready. Its worker is a
candidate at once (state `loading`), so other requests wait for it instead of spawning
more. A waiter whose cold start failed gets that error.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from queen_rbee import scheduler
from queen_rbee.control import Control
from queen_rbee.registry import Hive, Registry
from queen_rbee.scheduler import Candidate, HiveOption
from shared.errors import NoCapacity, RbeeError, ShuttingDown, WorkerFailed
from shared.workers import SpawnRequest, WorkerInfo

logger = logging.getLogger(__name__)

RECHECK_S = 1.0  # a waiting request re-runs its decision at least this often
# How often a cold start asks its hive whether the new worker is ready: a local GET costs
# little, and every interval is latency added to the first request's first token.
COLD_START_POLL_S = 0.05


@dataclass
class Lease:
    """One slot of one worker, held for one request."""

    worker_id: str
    hive_id: str
    url: str
    _release: Callable[[Lease], None]
    released: bool = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self._release(self)


@dataclass
class WaitStatus:
    """What a waiting request shows its client (keep-alive comments, native events)."""

    position: int = 0
    stage: str | None = None  # downloading, spawning, loading_model
    progress: float = 0.0
    # the last stage shown, kept after the cold start ended (a native stream served by a
    # cold start owes its client a `loading` event, however fast the start was)
    seen_stage: str | None = None


@dataclass
class ColdStart:
    model: str
    hive_id: str | None = None
    stage: str = "spawning"
    worker: WorkerInfo | None = None
    error: RbeeError | None = None
    finished_at: float = 0.0
    finished_wall: float = 0.0  # wall clock, to compare with heartbeat times
    done: asyncio.Event = field(default_factory=asyncio.Event)


class Dispatcher:
    def __init__(
        self,
        registry: Registry,
        control: Control,
        *,
        queue_size: int,
        max_workers_per_model: int,
        cold_start_timeout_s: float,
        quarantine_s: float,
    ) -> None:
        self.registry = registry
        self.control = control
        self.queue_size = queue_size
        self.max_workers = max_workers_per_model
        self.cold_start_timeout_s = cold_start_timeout_s
        self.quarantine_s = quarantine_s
        self.draining = False
        self.in_flight: dict[str, int] = {}
        self.last_used: dict[str, float] = {}
        self.queues: dict[str, deque[object]] = {}
        self._quarantine: dict[str, float] = {}
        self._ready_seen: set[str] = set()
        self._cold: dict[str, ColdStart] = {}
        self._failed: dict[str, ColdStart] = {}
        # Workers cold starts made ready that no heartbeat has listed yet, by worker id:
        # candidates until their hive's heartbeat lists them (or for `stale_after`), so a
        # fast cold start is not followed by a second one before the next heartbeat.
        self._fresh: dict[str, ColdStart] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # snapshot ------------------------------------------------------------------------

    def candidates(self, model: str, hive_id: str | None = None) -> list[Candidate]:
        now = time.monotonic()
        found: dict[str, Candidate] = {}
        listed = self.registry.serving(model)
        for c in listed:
            if hive_id is not None and c.hive_id != hive_id:
                continue
            if self._quarantine and self._quarantine.get(c.id, 0.0) > now:
                continue
            if c.state == "loading" and c.id in self._ready_seen:
                c = Candidate(c.id, c.hive_id, c.url, "idle", c.slots_total)
            found[c.id] = c
        if self._fresh:
            self._drop_fresh(model, {c.id for c in listed}, now)
        for cold in [*self._cold.values(), *self._fresh.values()]:
            if cold.model == model and cold.worker and cold.worker.id not in found:
                if hive_id is None or cold.hive_id == hive_id:
                    found[cold.worker.id] = self._candidate(cold.hive_id or "", cold.worker)
        return list(found.values())

    def _drop_fresh(self, model: str, listed: set[str], now: float) -> None:
        """A fresh worker leaves once its hive has sent a heartbeat since the worker was
        ready (from then on the registry knows it, or knows it is gone), once its hive is
        not online, or after `stale_after` in any case."""
        for worker_id, cold in list(self._fresh.items()):
            hive = self.registry.find(cold.hive_id or "")
            if (
                (cold.model == model and worker_id in listed)
                or hive is None
                or not self.registry.any_online(hive.id)
                or (hive.last_heartbeat or 0.0) > cold.finished_wall
                or now - cold.finished_at > self.registry.stale_after
            ):
                del self._fresh[worker_id]

    def forget(self, worker_id: str) -> None:
        """A worker an operator stopped is no candidate, even before a heartbeat says so."""
        self._fresh.pop(worker_id, None)
        self._ready_seen.discard(worker_id)

    def _candidate(self, hive_id: str, w: WorkerInfo) -> Candidate:
        state = "idle" if w.state == "loading" and w.id in self._ready_seen else w.state
        return Candidate(w.id, hive_id, w.url, state, w.slots.total)

    def hive_options(self, model: str, hive_id: str | None = None) -> list[HiveOption]:
        options = []
        for hive in self.registry.online():
            if hive_id is not None and hive.id != hive_id:
                continue
            if not hive.url:
                continue
            caps = hive.capabilities
            vram = 0
            if caps is not None:
                for backend in caps.backends:
                    for dev in backend.devices:
                        vram = max(vram, getattr(dev, "vram_free_bytes", 0))
            has = model in hive.models or any(w.model == model for w in hive.workers)
            options.append(HiveOption(hive.id, has, caps.ram_free_bytes if caps else 0, vram))
        return options

    def queue_depth(self, model: str) -> int:
        return len(self.queues.get(model, ()))

    # decisions -----------------------------------------------------------------------

    def try_lease(self, model: str, excluded: set[str], hive_id: str | None = None) -> Lease | None:
        chosen = scheduler.pick_worker(
            self.candidates(model, hive_id), self.in_flight, self.last_used, excluded
        )
        if chosen is None or not chosen.url:
            return None
        self.in_flight[chosen.id] = self.in_flight.get(chosen.id, 0) + 1
        self.last_used[chosen.id] = time.monotonic()
        return Lease(chosen.id, chosen.hive_id, chosen.url.rstrip("/"), self._release)

    def _release(self, lease: Lease) -> None:
        left = self.in_flight.get(lease.worker_id, 1) - 1
        if left > 0:
            self.in_flight[lease.worker_id] = left
        else:
            self.in_flight.pop(lease.worker_id, None)
        self.registry.changes.notify()

    def quarantine(self, worker_id: str) -> None:
        """A worker that failed is skipped until the quarantine ends."""
        self._quarantine[worker_id] = time.monotonic() + self.quarantine_s
        self._ready_seen.discard(worker_id)
        self._fresh.pop(worker_id, None)
        self.registry.changes.notify()

    def check_admission(self, hive_id: str | None) -> None:
        if self.draining:
            raise ShuttingDown()
        if not self.registry.any_online(hive_id):
            raise NoCapacity("No hive is online to serve this request.", retry_after=5)

    async def acquire(
        self,
        model: str,
        status: WaitStatus,
        *,
        excluded: set[str] | None = None,
        hive_id: str | None = None,
    ) -> Lease:
        """A lease on a worker for `model`, waiting in the model's queue if needed."""
        excluded = excluded or set()
        self.check_admission(hive_id)
        lease = self.try_lease(model, excluded, hive_id)
        if lease is not None:
            return lease
        queue = self.queues.setdefault(model, deque())
        if not scheduler.queue_has_room(len(queue), self.queue_size):
            workers = len(self.candidates(model))
            raise NoCapacity(
                f"The queue for this model is full ({self.queue_size} waiting).",
                retry_after=scheduler.retry_after_s(len(queue), workers),
            )
        ticket = object()
        queue.append(ticket)
        since = time.monotonic()
        try:
            while True:
                changed = self.registry.changes.event
                lease = self.try_lease(model, excluded, hive_id)
                if lease is not None:
                    return lease
                self.check_admission(hive_id)
                self._plan(model, excluded, hive_id, since)
                self._update(status, model, queue, ticket)
                try:
                    await asyncio.wait_for(changed.wait(), timeout=RECHECK_S)
                except TimeoutError:
                    pass
        finally:
            queue.remove(ticket)
            self.registry.changes.notify()

    def _plan(self, model: str, excluded: set[str], hive_id: str | None, since: float) -> None:
        failed = self._failed.get(model)
        if failed is not None and failed.error is not None and failed.done.is_set():
            if failed.finished_at >= since:
                raise failed.error
        action = scheduler.capacity_action(
            self.candidates(model, hive_id), excluded, model in self._cold, self.max_workers
        )
        if action == "spawn":
            self._start_cold(model, hive_id)

    def _update(self, status: WaitStatus, model: str, queue: deque[object], ticket: object) -> None:
        status.position = queue.index(ticket) + 1
        cold = self._cold.get(model)
        status.stage = cold.stage if cold else None
        status.seen_stage = status.stage or status.seen_stage

    # cold start ----------------------------------------------------------------------

    def _start_cold(self, model: str, hive_id: str | None) -> None:
        cold = ColdStart(model)
        self._cold[model] = cold
        task = asyncio.create_task(self._run_cold(cold, hive_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_cold(self, cold: ColdStart, hive_id: str | None) -> None:
        try:
            async with asyncio.timeout(self.cold_start_timeout_s):
                await self._spawn_and_wait(cold, hive_id)
        except RbeeError as exc:
            cold.error = exc
        except TimeoutError:
            cold.error = WorkerFailed("The new worker did not become ready in time.")
        except Exception:
            logger.exception("cold start failed", extra={"action": "cold_start"})
            cold.error = WorkerFailed("The new worker could not be started.")
        finally:
            cold.finished_at, cold.finished_wall = time.monotonic(), time.time()
            cold.done.set()
            self._cold.pop(cold.model, None)
            if cold.error is None and cold.worker is not None:
                self._fresh[cold.worker.id] = cold
            if cold.error is not None:
                self._failed[cold.model] = cold
                logger.warning(
                    "cold start failed: %s",
                    cold.error.message,
                    extra={"action": "cold_start", "model": cold.model},
                )
            self.registry.changes.notify()

    async def _spawn_and_wait(self, cold: ColdStart, hive_id: str | None) -> None:
        choice = scheduler.pick_hive(self.hive_options(cold.model, hive_id), None)
        if choice is None:
            raise NoCapacity("No online hive can host this model.", retry_after=10)
        hive = self.registry.get(choice.id)
        cold.hive_id = hive.id
        logger.info(
            "cold start", extra={"action": "cold_start", "model": cold.model, "hive_id": hive.id}
        )
        info = await self.control.spawn(
            _url(hive), SpawnRequest.model_validate({"model_ref": cold.model})
        )
        cold.worker = info
        self.registry.changes.notify()
        while info.state not in scheduler.READY_STATES:
            if info.state == "failed":
                raise WorkerFailed("The new worker failed to load its model.")
            cold.stage = "downloading" if info.state == "downloading" else "loading_model"
            await asyncio.sleep(COLD_START_POLL_S)
            info = await self.control.worker(_url(hive), info.id)
            cold.worker = info
        self._ready_seen.add(info.id)
        logger.info(
            "worker ready",
            extra={"action": "cold_start_ready", "worker_id": info.id, "hive_id": hive.id},
        )

    def spawning(self, model: str) -> ColdStart | None:
        return self._cold.get(model)


def _url(hive: Hive) -> str:
    if not hive.url:
        raise NoCapacity(f"Hive '{hive.id}' has no URL yet.", retry_after=5)
    return hive.url
