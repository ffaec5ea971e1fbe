"""The worker pool: spawns, supervises, restarts, adopts and stops worker processes.

Ownership: `Pool.workers` is changed only by pool methods on the event loop, never across
an `await` between a check and the change (port choice and id insert are synchronous).
Each worker then has exactly one owner, its supervisor task, which alone changes its
state and its process: provision -> launch -> wait for ready -> monitor -> (crash ->
backoff -> launch again | idle -> stop | failed). Other code asks: the ready callback sets
the worker's `ready` event; `stop()` cancels the supervisor, whose cancellation handler
stops the process gracefully (SIGTERM, then SIGKILL at the drain budget). Shutdown cancels
every supervisor at once, so workers stop in parallel.

Crash rules (SPEC 7): an exit is seen at once (children) or within 0.5 s (adopted); failed
health checks end in SIGKILL and count as a crash; crashes restart with backoff 1, 2, 4 s,
at most `restart_limit` in `restart_window_s`, then `failed`. A worker that exits before it
is ready, or misses its ready timeout, is `failed` and not retried. A worker that exits 0
on its own (stopped directly, or its orphan rule) leaves the list.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Literal

import httpx

from rbee_hive.catalog import Store, WorkerRecord
from rbee_hive.probes import WorkerProbe
from rbee_hive.process import (
    AdoptedProcess,
    WorkerProcess,
    is_worker_process,
    pid_alive,
    port_free,
    start_worker,
)
from rbee_hive.provisioner import Provisioner
from rbee_hive.resources import (
    Resources,
    check_backend_name,
    default_backend,
    preflight,
)
from rbee_hive.settings import HiveSettings
from rbee_hive.standby import Standby, new_worker_id
from rbee_hive.worker import Worker, launch_args, worker_env
from shared.errors import (
    NoCapacity,
    RbeeError,
    ShuttingDown,
    ValidationError,
    WorkerNotFound,
)
from shared.modelref import parse_model_ref
from shared.workers import Readiness, ReadyCallback, SpawnRequest, WorkerInfo

logger = logging.getLogger(__name__)

GIB = 1024**3
MAX_PORT_SCAN = 1000
Outcome = Literal["crashed", "idle", "exited"]
TokenSource = Callable[[], str | None]


class Pool:
    def __init__(
        self,
        settings: HiveSettings,
        store: Store,
        provisioner: Provisioner,
        resources: Resources,
        client: httpx.AsyncClient,
        token: TokenSource,
    ) -> None:
        self.settings = settings
        self.store = store
        self.provisioner = provisioner
        self.resources = resources
        self.probe = WorkerProbe(client, token, settings.health_check_timeout_s)
        self.workers: dict[str, Worker] = {}
        self.standby = Standby(
            enabled=settings.standby_worker,
            command=settings.worker_command,
            callback_url=settings.base_url + "/v1/workers/ready",
            env=lambda: worker_env(settings),
            logs_dir=settings.logs_dir,
        )
        self.closing = False
        self.restarts_total = 0
        # Called after a change the queen should hear of at once (the heartbeat's nudge).
        self.on_change: Callable[[], None] = lambda: None
        self._close_task: asyncio.Task[None] | None = None

    # queries

    def get(self, worker_id: str) -> Worker:
        worker = self.workers.get(worker_id)
        if worker is None:
            raise WorkerNotFound(f"No worker with id '{worker_id[:64]}' on this hive.")
        return worker

    def infos(self) -> list[WorkerInfo]:
        return [w.info() for w in self.workers.values()]

    def models_in_use(self) -> set[str]:
        return {w.model_ref for w in self.workers.values() if w.state != "failed"}

    # commands

    async def spawn(self, request: SpawnRequest) -> WorkerInfo:
        """Preflight, then hand the worker to its supervisor; returns at once (202)."""
        if self.closing:
            raise ShuttingDown("The hive is shutting down and spawns no workers.")
        ref = parse_model_ref(request.model_ref, param="model_ref")
        if request.backend is not None:
            check_backend_name(request.backend)
        caps = await self.resources.capabilities()
        backend, device = default_backend(caps)
        backend = request.backend or backend
        device = request.device if request.device is not None else device
        entry = await self.provisioner.lookup(ref)
        preflight(caps, backend, device, entry.size if entry else None)
        if entry is None:
            await self.provisioner.precheck(ref)  # unknown aliases fail now, not later
        worker = self._new_worker(entry.model_ref if entry else ref.raw, backend, device, request)
        if entry is None:
            worker.state = "downloading"
        else:
            worker.model_path, worker.model_size = entry.path, entry.size or 0
        worker.task = asyncio.create_task(self._supervise(worker, None))
        logger.info(
            "spawning worker %s for %s on %s:%d",
            worker.id,
            worker.model_ref,
            backend,
            device,
            extra={"action": "worker_spawn", "worker_id": worker.id, "model": worker.model_ref},
        )
        self.on_change()
        return worker.info()

    def _new_worker(
        self, model_ref: str, backend: str, device: int, request: SpawnRequest
    ) -> Worker:
        ready = asyncio.Event()
        standby = self.standby.claim(refill_after=ready)
        worker_id = standby.worker_id if standby else new_worker_id()
        port = self._allocate_port(None)
        worker = Worker(
            id=worker_id,
            ready=ready,
            standby=standby,
            model_ref=model_ref,
            backend=backend,
            device=device,
            n_ctx=request.n_ctx,
            slots=request.slots,
            port=port,
            url=self._url(port),
            slots_total=request.slots or 1,
        )
        self.workers[worker_id] = worker
        return worker

    def on_ready(self, callback: ReadyCallback) -> WorkerInfo:
        worker = self.get(callback.worker_id)
        if callback.model_ref != worker.model_ref:
            raise ValidationError(
                f"Worker '{worker.id}' was spawned for a different model.", param="model_ref"
            )
        worker.slots_total = callback.slots_total
        worker.ready.set()
        return worker.info()

    async def stop(self, worker_id: str) -> None:
        """Graceful stop; the worker leaves the list."""
        worker = self.get(worker_id)
        task = worker.task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await self._forget(worker)

    def begin_close(self) -> asyncio.Task[None]:
        """Stop every worker in parallel; safe to call more than once."""
        self.closing = True
        if self._close_task is None:
            self._close_task = asyncio.create_task(self._close())
        return self._close_task

    def kill_all(self) -> None:
        """SIGKILL every worker process now: the last resort of a forced exit."""
        self.standby.kill()
        for worker in self.workers.values():
            if worker.process is not None:
                worker.process.send(signal.SIGKILL)

    async def _close(self) -> None:
        await self.standby.close()
        workers = list(self.workers.values())
        await asyncio.gather(*(self.stop(w.id) for w in workers), return_exceptions=True)

    # adoption

    async def adopt_existing(self) -> None:
        """Adopt healthy workers an earlier hive left in hive.db; kill the rest."""
        records = await self.store.workers()
        probes = await asyncio.gather(*(self._probe(r) for r in records))
        for record, readiness in zip(records, probes, strict=True):
            entry = await self.store.find_model(record.model_ref)
            if readiness is None or record.pid is None or entry is None:
                await self._discard(record)
                continue
            worker = Worker(
                id=record.id,
                model_ref=record.model_ref,
                backend=record.backend,
                device=record.device,
                n_ctx=record.n_ctx,
                slots=record.slots,
                port=record.port,
                url=record.url,
                restarts=record.restarts,
                model_path=entry.path,
                model_size=entry.size or 0,
                slots_total=readiness.slots_total,
                slots_busy=readiness.slots_busy,
            )
            worker.process = AdoptedProcess(record.pid)
            if readiness.ready:
                worker.ready.set()
                worker.state = "busy" if readiness.slots_busy else "idle"
            self.workers[worker.id] = worker
            worker.task = asyncio.create_task(self._supervise(worker, worker.process))
            logger.info(
                "adopted worker %s (pid %d)",
                worker.id,
                record.pid,
                extra={"action": "worker_adopted", "worker_id": worker.id},
            )

    async def _probe(self, record: WorkerRecord) -> Readiness | None:
        if record.pid is None or not is_worker_process(record.pid, record.id):
            return None
        if not await self.probe.healthy(record.url):
            return None
        readiness = await self.probe.readiness(record.url)
        if readiness is None or readiness.model_ref != record.model_ref:
            return None
        return readiness

    async def _discard(self, record: WorkerRecord) -> None:
        if record.pid is not None and is_worker_process(record.pid, record.id):
            with contextlib.suppress(ProcessLookupError):
                os.kill(record.pid, signal.SIGKILL)
            logger.info(
                "killed unhealthy leftover worker %s",
                record.id,
                extra={"action": "worker_discarded", "worker_id": record.id},
            )
        await self.store.delete_worker(record.id)

    # the supervisor

    async def _supervise(self, worker: Worker, process: WorkerProcess | None) -> None:
        try:
            await self._lifecycle(worker, process)
        except asyncio.CancelledError:
            await self._terminate(worker)
            raise
        except Exception:
            logger.exception(
                "supervisor of worker %s crashed",
                worker.id,
                extra={"action": "supervisor_error", "worker_id": worker.id},
            )
            await self._terminate(worker)
            await self._fail(worker, "its supervisor hit an internal error")
        finally:
            if worker.standby is not None:  # claimed, never launched: let it go
                worker.standby.release()
                worker.standby = None

    async def _lifecycle(self, worker: Worker, process: WorkerProcess | None) -> None:
        if worker.state == "downloading" and not await self._provision(worker):
            return
        while True:
            if process is None:
                try:
                    process = await self._launch(worker)
                except OSError as exc:
                    await self._fail(worker, f"the worker command did not start ({exc.strerror})")
                    return
            if not worker.ready.is_set() and not await self._await_ready(worker, process):
                return
            outcome = await self._monitor(worker, process)
            process = None
            if outcome == "idle":
                logger.info(
                    "worker %s idle for %g s: stopping",
                    worker.id,
                    self.settings.worker_idle_timeout_s,
                    extra={"action": "worker_idle_stop", "worker_id": worker.id},
                )
                await self._terminate(worker)
                await self._forget(worker)
                return
            if outcome == "exited":
                await self._forget(worker)
                return
            if not await self._restart_delay(worker):
                return

    async def _provision(self, worker: Worker) -> bool:
        try:
            entry = await self.provisioner.ensure(parse_model_ref(worker.model_ref))
            preflight(
                await self.resources.capabilities(), worker.backend, worker.device, entry.size
            )
        except RbeeError as exc:
            await self._fail(worker, f"its model could not be provisioned: {exc.message}")
            return False
        worker.model_path, worker.model_size = entry.path, entry.size or 0
        worker.state = "loading"
        return True

    async def _launch(self, worker: Worker) -> WorkerProcess:
        worker.port = self._allocate_port(worker)
        worker.url = self._url(worker.port)
        worker.state, worker.slots_busy = "loading", 0
        worker.ready.clear()
        args = launch_args(worker, self._worker_host(), self.settings.base_url)
        standby, worker.standby = worker.standby, None
        if standby is not None and standby.alive:
            launch = asyncio.ensure_future(standby.assign(args))
        else:
            if standby is not None:
                standby.release()
            launch = asyncio.ensure_future(
                start_worker(
                    self.settings.worker_command,
                    args,
                    worker_env(self.settings),
                    self.settings.logs_dir / f"worker-{worker.id}.log",
                )
            )
        try:
            process = await asyncio.shield(launch)
        except asyncio.CancelledError:
            # Stopped while starting: finish the start so the process can be stopped too.
            worker.process = await launch
            raise
        worker.process = process
        await self.store.put_worker(worker.record())
        logger.info(
            "worker %s started (pid %d, port %d)",
            worker.id,
            process.pid,
            worker.port,
            extra={
                "action": "worker_started",
                "worker_id": worker.id,
                "pid": process.pid,
                "port": worker.port,
            },
        )
        return process

    async def _await_ready(self, worker: Worker, process: WorkerProcess) -> bool:
        """Wait for the callback (or a 200 from /v1/ready); False when the worker failed."""
        settings = self.settings
        budget = settings.ready_timeout_s + settings.ready_timeout_per_gib_s * (
            worker.model_size / GIB
        )
        deadline = time.monotonic() + budget
        exited = asyncio.create_task(process.wait())
        ready = asyncio.create_task(worker.ready.wait())
        try:
            while not ready.done():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    process.send(signal.SIGKILL)
                    await exited
                    await self._fail(worker, f"it was not ready within {budget:g} s and was killed")
                    return False
                tick = min(remaining, settings.health_check_interval_s)
                await asyncio.wait(
                    {exited, ready}, timeout=tick, return_when=asyncio.FIRST_COMPLETED
                )
                if exited.done() and not ready.done():
                    status = exited.result()
                    await self._fail(worker, f"it exited with status {status} while loading")
                    return False
                if not ready.done():
                    await self._check_readiness(worker)
        finally:
            for task in (exited, ready):
                task.cancel()
        worker.state, worker.last_active = "idle", time.monotonic()
        logger.info(
            "worker %s is ready",
            worker.id,
            extra={"action": "worker_ready", "worker_id": worker.id},
        )
        self.on_change()
        return True

    async def _monitor(self, worker: Worker, process: WorkerProcess) -> Outcome:
        settings = self.settings
        exited = asyncio.create_task(process.wait())
        failures = 0
        try:
            while True:
                await asyncio.wait({exited}, timeout=settings.health_check_interval_s)
                if exited.done():
                    status = exited.result()
                    if status == 0:
                        logger.info(
                            "worker %s exited by itself",
                            worker.id,
                            extra={"action": "worker_exited", "worker_id": worker.id},
                        )
                        return "exited"
                    logger.warning(
                        "worker %s crashed (status %s)",
                        worker.id,
                        status,
                        extra={"action": "worker_crashed", "worker_id": worker.id},
                    )
                    return "crashed"
                failures = 0 if await self._health_check(worker) else failures + 1
                if failures >= settings.health_check_failures:
                    logger.warning(
                        "worker %s failed %d health checks: killing it",
                        worker.id,
                        failures,
                        extra={"action": "worker_unhealthy", "worker_id": worker.id},
                    )
                    process.send(signal.SIGKILL)
                    await exited
                    return "crashed"
                if self._idle_expired(worker):
                    return "idle"
        finally:
            exited.cancel()

    def _idle_expired(self, worker: Worker) -> bool:
        limit = self.settings.worker_idle_timeout_s
        return (
            limit > 0 and worker.state == "idle" and time.monotonic() - worker.last_active >= limit
        )

    async def _health_check(self, worker: Worker) -> bool:
        worker.last_health_check = datetime.now(UTC)
        if not await self.probe.healthy(worker.url):
            return False
        await self._check_readiness(worker)
        return True

    async def _check_readiness(self, worker: Worker) -> None:
        """Slots and idle/busy from the worker's readiness probe; sets `ready` on a 200."""
        readiness = await self.probe.readiness(worker.url)
        if readiness is None or readiness.model_ref != worker.model_ref:
            return
        worker.slots_total, worker.slots_busy = readiness.slots_total, readiness.slots_busy
        if readiness.ready:
            worker.ready.set()
        if worker.state in ("idle", "busy"):
            worker.state = "busy" if readiness.slots_busy else "idle"
            if readiness.slots_busy:
                worker.last_active = time.monotonic()

    async def _restart_delay(self, worker: Worker) -> bool:
        """Wait the backoff before a restart; False (and `failed`) past the limit."""
        now = time.monotonic()
        window = self.settings.restart_window_s
        worker.restart_times = [t for t in worker.restart_times if now - t < window]
        if len(worker.restart_times) >= self.settings.restart_limit:
            await self._fail(
                worker, f"it crashed more than {self.settings.restart_limit} times in {window:g} s"
            )
            return False
        delay = self.settings.restart_backoff_s * 2 ** len(worker.restart_times)
        worker.restart_times.append(now)
        worker.state, worker.process = "loading", None
        await asyncio.sleep(delay)
        worker.restarts += 1
        self.restarts_total += 1
        logger.info(
            "restarting worker %s (restart %d)",
            worker.id,
            worker.restarts,
            extra={"action": "worker_restart", "worker_id": worker.id},
        )
        return True

    async def _terminate(self, worker: Worker) -> None:
        """SIGTERM, wait up to the drain budget, then SIGKILL."""
        process = worker.process
        if process is None or not pid_alive(process.pid):
            return
        worker.state = "draining"
        process.send(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), self.settings.drain_timeout_s)
        except TimeoutError:
            logger.warning(
                "worker %s did not stop in %g s: SIGKILL",
                worker.id,
                self.settings.drain_timeout_s,
                extra={"action": "worker_killed", "worker_id": worker.id},
            )
            process.send(signal.SIGKILL)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), 5)

    async def _fail(self, worker: Worker, reason: str) -> None:
        """`failed` stays listed until deleted; no process is left to adopt."""
        worker.state, worker.slots_busy, worker.process = "failed", 0, None
        logger.error(
            "worker %s failed: %s; see logs/worker-%s.log",
            worker.id,
            reason,
            worker.id,
            extra={"action": "worker_failed", "worker_id": worker.id},
        )
        self.on_change()
        with contextlib.suppress(Exception):
            await self.store.delete_worker(worker.id)

    async def _forget(self, worker: Worker) -> None:
        self.workers.pop(worker.id, None)
        self.on_change()
        with contextlib.suppress(Exception):
            await self.store.delete_worker(worker.id)

    # ports and URLs

    def _worker_host(self) -> str:
        return self.settings.worker_host or self.settings.host

    def _url(self, port: int) -> str:
        host = self._worker_host()
        if host in ("0.0.0.0", "::", ""):
            from urllib.parse import urlsplit

            host = urlsplit(self.settings.base_url).hostname or "127.0.0.1"
        return f"http://{host}:{port}"

    def _allocate_port(self, worker: Worker | None) -> int:
        """Keep a restarted worker's port when free, else the first free one upward."""
        taken = {w.port for w in self.workers.values() if w is not worker}
        host = self._worker_host()
        if worker is not None and worker.port not in taken and port_free(host, worker.port):
            return worker.port
        start = self.settings.worker_port_start
        for port in range(start, min(start + MAX_PORT_SCAN, 65536)):
            if port not in taken and port_free(host, port):
                return port
        raise NoCapacity("No free port for a worker on this hive.")
