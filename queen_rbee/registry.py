"""The hive registry: hives in SQLite, their workers and models in memory.

Ownership: this object is the only writer of the hive table and of the per-hive snapshots.
Every mutation runs on the event loop without an `await` between the read that decides it
and the write, so the in-memory view is always consistent; the SQLite write that follows
is only persistence (aiosqlite runs it on its own thread, serialised).

Level-triggered: a heartbeat is the full truth about one hive and replaces its worker and
model lists whole. Hive states come from the age of the last heartbeat (wall clock, so
they survive a restart): `online` below `stale_after`, `stale` below `offline_after`,
`offline` beyond. Only workers of `online` hives are offered to the scheduler.
Every change bumps :class:`Changes`, which wakes whoever waits for capacity.

Scale: every request asks "which workers serve model M", so the registry keeps an index
from model to its workers, updated by each heartbeat; a decision reads the few workers
of its model, never the whole fleet. Heartbeats that change only the time of the last
beat are not written one by one: a flusher writes the times of all hives that beat in one
transaction every `flush_interval_s` (a restarted queen may see a beat up to that much
older, far below the stale limit). Registrations, additions and removals are written at
once.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import aiosqlite

from queen_rbee.scheduler import Candidate
from shared.errors import HiveAlreadyExists, HiveNotFound
from shared.hives import Capabilities, Heartbeat, HiveInfo, HiveRegistration, HiveState, SshTarget
from shared.workers import WorkerInfo

logger = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS hives (
    id TEXT PRIMARY KEY,
    url TEXT,
    ssh TEXT,
    version TEXT,
    capabilities TEXT,
    last_heartbeat REAL,
    ssh_pid INTEGER
)
"""


class Changes:
    """A broadcast 'something changed': waiters grab `event` and wait on it."""

    def __init__(self) -> None:
        self.event = asyncio.Event()

    def notify(self) -> None:
        self.event.set()
        self.event = asyncio.Event()


@dataclass(eq=False)
class Hive:
    id: str
    url: str | None
    ssh: SshTarget | None = None
    version: str | None = None
    capabilities: Capabilities | None = None
    last_heartbeat: float | None = None
    ssh_pid: int | None = None
    workers: list[WorkerInfo] = field(default_factory=list)
    models: list[str] = field(default_factory=list)

    def state(self, now: float, stale_after: float, offline_after: float) -> HiveState:
        if self.last_heartbeat is None:
            return "offline"
        age = now - self.last_heartbeat
        if age < stale_after:
            return "online"
        return "stale" if age < offline_after else "offline"


def _iso(ts: float | None) -> datetime | None:
    return datetime.fromtimestamp(ts, UTC) if ts is not None else None


class Registry:
    def __init__(
        self, path: Path, stale_after: float, offline_after: float, flush_interval_s: float = 1.0
    ) -> None:
        self.path = path
        self.stale_after = stale_after
        self.offline_after = offline_after
        self.flush_interval_s = flush_interval_s
        self.changes = Changes()
        self._hives: dict[str, Hive] = {}
        # model -> worker id -> (its hive, the worker as the scheduler sees it)
        self._serving: dict[str, dict[str, tuple[Hive, Candidate]]] = {}
        # model (on disk or running) -> the hives that have it
        self._holders: dict[str, set[Hive]] = {}
        self._beaten: set[str] = set()  # hives whose last beat is not yet on disk
        self._flusher: asyncio.Task[None] | None = None
        self._db: aiosqlite.Connection | None = None

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = await aiosqlite.connect(self.path)
        await self._db.execute("PRAGMA journal_mode=WAL")
        await self._db.execute(_SCHEMA)
        await self._db.commit()
        async with self._db.execute(
            "SELECT id, url, ssh, version, capabilities, last_heartbeat, ssh_pid FROM hives"
        ) as cursor:
            async for row in cursor:
                self._hives[row[0]] = Hive(
                    id=row[0],
                    url=row[1],
                    ssh=SshTarget.model_validate_json(row[2]) if row[2] else None,
                    version=row[3],
                    capabilities=Capabilities.model_validate_json(row[4]) if row[4] else None,
                    last_heartbeat=row[5],
                    ssh_pid=row[6],
                )
        logger.info("registry opened with %d hives", len(self._hives), extra={"action": "registry"})
        self._flusher = asyncio.create_task(self._flush_periodically())

    async def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            await asyncio.gather(self._flusher, return_exceptions=True)
            self._flusher = None
        if self._db is not None:
            await self._flush()
            await self._db.close()
            self._db = None

    async def _flush_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval_s)
            try:
                await self._flush()
            except (sqlite3.Error, ValueError) as exc:  # a full disk must not stop the queen
                logger.warning("heartbeat times not saved: %s", exc, extra={"action": "registry"})

    async def _flush(self) -> None:
        """Write the last beat of every hive that beat since the last flush, at once."""
        if not self._beaten or self._db is None:
            return
        rows = [(self._hives[i].last_heartbeat, i) for i in self._beaten if i in self._hives]
        self._beaten = set()
        await self._db.executemany("UPDATE hives SET last_heartbeat = ? WHERE id = ?", rows)
        await self._db.commit()

    async def _save(self, hive: Hive) -> None:
        assert self._db is not None
        self._beaten.discard(hive.id)
        caps = hive.capabilities.model_dump_json() if hive.capabilities else None
        ssh = hive.ssh.model_dump_json() if hive.ssh else None
        await self._db.execute(
            "INSERT OR REPLACE INTO hives VALUES (?, ?, ?, ?, ?, ?, ?)",
            (hive.id, hive.url, ssh, hive.version, caps, hive.last_heartbeat, hive.ssh_pid),
        )
        await self._db.commit()

    # reads -------------------------------------------------------------------------

    def state_of(self, hive: Hive, now: float | None = None) -> HiveState:
        return hive.state(now or time.time(), self.stale_after, self.offline_after)

    def hives(self) -> list[Hive]:
        return sorted(self._hives.values(), key=lambda h: h.id)

    def online(self) -> list[Hive]:
        now = time.time()
        return [h for h in self.hives() if self.state_of(h, now) == "online"]

    def any_online(self, hive_id: str | None = None) -> bool:
        """Is some hive (or the given one) online? Stops at the first that is."""
        now = time.time()
        if hive_id is not None:
            hive = self._hives.get(hive_id)
            return hive is not None and self.state_of(hive, now) == "online"
        return any(self.state_of(h, now) == "online" for h in self._hives.values())

    def serving(self, model: str) -> list[Candidate]:
        """The workers of `model` on online hives."""
        placements = self._serving.get(model)
        if not placements:
            return []
        now = time.time()
        return [c for h, c in placements.values() if self.state_of(h, now) == "online"]

    def has_model(self, model: str) -> bool:
        """Is `model` on disk or running on a hive that is not offline?"""
        now = time.time()
        return any(self.state_of(h, now) != "offline" for h in self._holders.get(model, ()))

    def find(self, hive_id: str) -> Hive | None:
        return self._hives.get(hive_id)

    def get(self, hive_id: str) -> Hive:
        hive = self._hives.get(hive_id)
        if hive is None:
            raise HiveNotFound(f"Hive '{hive_id}' is not registered.")
        return hive

    def workers_of(self, hive_id: str) -> list[WorkerInfo]:
        hive = self._hives.get(hive_id)
        return list(hive.workers) if hive else []

    def info(self, hive: Hive) -> HiveInfo:
        return HiveInfo(
            id=hive.id,
            url=hive.url,
            state=self.state_of(hive),
            last_heartbeat=_iso(hive.last_heartbeat),
            capabilities=hive.capabilities,
        )

    def model_names(self) -> list[str]:
        """Models on disk or running on any hive that is not offline."""
        return sorted(m for m in self._holders if self.has_model(m))

    # the index ----------------------------------------------------------------------

    def _set_contents(self, hive: Hive, workers: list[WorkerInfo], models: list[str]) -> None:
        """Replace what `hive` runs and holds, in the hive and in the index."""
        self._unindex(hive)
        hive.workers, hive.models = workers, models
        for w in workers:
            candidate = Candidate(w.id, hive.id, w.url, w.state, w.slots.total)
            self._serving.setdefault(w.model, {})[w.id] = (hive, candidate)
        for name in {*models, *(w.model for w in workers)}:
            self._holders.setdefault(name, set()).add(hive)

    def _unindex(self, hive: Hive) -> None:
        for w in hive.workers:
            placements = self._serving.get(w.model)
            if placements is not None and placements.get(w.id, (None,))[0] is hive:
                del placements[w.id]
                if not placements:
                    del self._serving[w.model]
        for name in {*hive.models, *(w.model for w in hive.workers)}:
            holders = self._holders.get(name)
            if holders is not None:
                holders.discard(hive)
                if not holders:
                    del self._holders[name]

    # writes ------------------------------------------------------------------------

    def ensure_absent(self, hive_id: str) -> None:
        if hive_id in self._hives:
            raise HiveAlreadyExists(f"A hive with id '{hive_id}' is already registered.")

    async def add(self, hive_id: str, url: str | None, ssh: SshTarget | None) -> Hive:
        self.ensure_absent(hive_id)
        hive = Hive(id=hive_id, url=url.rstrip("/") if url else None, ssh=ssh)
        self._hives[hive_id] = hive
        await self._save(hive)
        return hive

    async def set_ssh_pid(self, hive: Hive, pid: int | None, url: str | None) -> None:
        hive.ssh_pid = pid
        if url:
            hive.url = url
        await self._save(hive)

    async def register(self, hive_id: str, reg: HiveRegistration) -> Hive:
        hive = self._hives.get(hive_id)
        if hive is None:
            hive = self._hives[hive_id] = Hive(id=hive_id, url=None)
        hive.url = reg.url.rstrip("/")
        hive.version = reg.version
        hive.capabilities = reg.capabilities or hive.capabilities
        hive.last_heartbeat = time.time()
        self.changes.notify()
        await self._save(hive)
        logger.info("hive registered", extra={"action": "hive_register", "hive_id": hive_id})
        return hive

    async def heartbeat(self, hive_id: str, beat: Heartbeat) -> Hive:
        hive = self._hives.get(hive_id)
        if hive is None and beat.url:  # a hive we forgot (wiped db): take it back
            hive = self._hives[hive_id] = Hive(id=hive_id, url=beat.url)
        hive = hive or self.get(hive_id)
        was = self.state_of(hive)
        self._set_contents(hive, list(beat.workers), list(beat.models))
        url = beat.url.rstrip("/") if beat.url else hive.url
        durable_change = url != hive.url or (
            beat.capabilities is not None and beat.capabilities != hive.capabilities
        )
        hive.url = url
        if beat.capabilities is not None:
            hive.capabilities = beat.capabilities
        hive.last_heartbeat = time.time()
        self.changes.notify()
        if was != "online":
            logger.info("hive online", extra={"action": "hive_online", "hive_id": hive_id})
        if durable_change or was == "offline":
            await self._save(hive)
        else:
            self._beaten.add(hive.id)
        return hive

    async def remove(self, hive_id: str) -> Hive:
        hive = self.get(hive_id)
        self._unindex(hive)
        del self._hives[hive_id]
        self._beaten.discard(hive_id)
        self.changes.notify()
        assert self._db is not None
        await self._db.execute("DELETE FROM hives WHERE id = ?", (hive_id,))
        await self._db.commit()
        return hive

    async def mark_stopped(self, hive_id: str) -> None:
        """A hive that was told to stop is offline now, with no workers, until it beats
        again; so no cold start picks it in the meantime."""
        hive = self.get(hive_id)
        self._set_contents(hive, [], [])
        hive.last_heartbeat = None
        self.changes.notify()
        await self._save(hive)

    def forget_worker(self, worker_id: str) -> None:
        """A worker the queen stopped leaves the view before the next heartbeat says so."""
        for hive in self._hives.values():
            if any(w.id == worker_id for w in hive.workers):
                kept = [w for w in hive.workers if w.id != worker_id]
                self._set_contents(hive, kept, hive.models)
        self.changes.notify()
