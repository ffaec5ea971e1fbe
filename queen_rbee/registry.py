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
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import aiosqlite

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


@dataclass
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
    def __init__(self, path: Path, stale_after: float, offline_after: float) -> None:
        self.path = path
        self.stale_after = stale_after
        self.offline_after = offline_after
        self.changes = Changes()
        self._hives: dict[str, Hive] = {}
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

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    async def _save(self, hive: Hive) -> None:
        assert self._db is not None
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
        now = time.time()
        names: set[str] = set()
        for hive in self._hives.values():
            if self.state_of(hive, now) != "offline":
                names.update(hive.models)
                names.update(w.model for w in hive.workers)
        return sorted(names)

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
        hive.workers = list(beat.workers)
        hive.models = list(beat.models)
        if beat.url:
            hive.url = beat.url.rstrip("/")
        if beat.capabilities is not None:
            hive.capabilities = beat.capabilities
        hive.last_heartbeat = time.time()
        self.changes.notify()
        if was != "online":
            logger.info("hive online", extra={"action": "hive_online", "hive_id": hive_id})
        await self._save(hive)
        return hive

    async def remove(self, hive_id: str) -> Hive:
        hive = self.get(hive_id)
        del self._hives[hive_id]
        self.changes.notify()
        assert self._db is not None
        await self._db.execute("DELETE FROM hives WHERE id = ?", (hive_id,))
        await self._db.commit()
        return hive

    def forget_worker(self, worker_id: str) -> None:
        """A worker the queen stopped leaves the view before the next heartbeat says so."""
        for hive in self._hives.values():
            hive.workers = [w for w in hive.workers if w.id != worker_id]
        self.changes.notify()
