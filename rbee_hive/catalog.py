"""The hive's state on disk: `<data-dir>/hive.db` (SQLite in WAL mode, through aiosqlite).

Two tables: `models` (the catalog of files on disk, with their GGUF metadata) and
`workers` (pid and port of each running worker, so a restarted hive can adopt them).
One :class:`Store` owns the connection; aiosqlite serialises statements on its own
thread, so callers on the event loop never block and never interleave a transaction.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiosqlite

from shared.catalog import CatalogEntry
from shared.modelref import ModelRef

logger = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
    id TEXT PRIMARY KEY,
    model_ref TEXT NOT NULL UNIQUE,
    alias TEXT,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT,
    architecture TEXT,
    context_length INTEGER,
    parameter_count INTEGER,
    downloaded_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS workers (
    id TEXT PRIMARY KEY,
    model_ref TEXT NOT NULL,
    backend TEXT NOT NULL,
    device INTEGER NOT NULL,
    pid INTEGER,
    port INTEGER NOT NULL,
    url TEXT NOT NULL,
    n_ctx INTEGER,
    slots INTEGER,
    restarts INTEGER NOT NULL DEFAULT 0
);
"""

_MODEL_COLUMNS = (
    "id, model_ref, alias, path, size, sha256, architecture, context_length, "
    "parameter_count, downloaded_at"
)


@dataclass(frozen=True)
class WorkerRecord:
    """What survives a hive restart about one worker."""

    id: str
    model_ref: str
    backend: str
    device: int
    pid: int | None
    port: int
    url: str
    n_ctx: int | None
    slots: int | None
    restarts: int


def file_exists(path: str | Path | None) -> bool:
    """A cheap stat; fine on the event loop."""
    return bool(path) and os.path.isfile(path or "")


def catalog_id(ref: ModelRef, taken_by_other: bool) -> str:
    """The slug of the ref; a short hash is added when another ref already uses it."""
    if not taken_by_other:
        return ref.slug
    return f"{ref.slug[:110]}-{hashlib.sha256(ref.raw.encode()).hexdigest()[:8]}"


def _entry(row: aiosqlite.Row) -> CatalogEntry:
    data: dict[str, Any] = dict(row)
    return CatalogEntry(state="ready", **data)


class Store:
    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db

    @classmethod
    async def open(cls, path: Path) -> Store:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = await aiosqlite.connect(path)
        db.row_factory = aiosqlite.Row
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute("PRAGMA busy_timeout=5000")
        await db.executescript(_SCHEMA)
        await db.commit()
        return cls(db)

    async def close(self) -> None:
        await self._db.close()

    # models

    async def models(self) -> list[CatalogEntry]:
        async with self._db.execute(f"SELECT {_MODEL_COLUMNS} FROM models ORDER BY id") as cur:
            return [_entry(row) for row in await cur.fetchall()]

    async def find_model(self, name: str) -> CatalogEntry | None:
        """By model_ref, alias or catalog id."""
        query = f"SELECT {_MODEL_COLUMNS} FROM models WHERE model_ref = ? OR alias = ? OR id = ?"
        async with self._db.execute(query, (name, name, name)) as cur:
            row = await cur.fetchone()
        return _entry(row) if row else None

    async def id_taken_by_other(self, model_id: str, model_ref: str) -> bool:
        query = "SELECT 1 FROM models WHERE id = ? AND model_ref != ?"
        async with self._db.execute(query, (model_id, model_ref)) as cur:
            return await cur.fetchone() is not None

    async def put_model(self, entry: CatalogEntry) -> None:
        values = entry.model_dump(exclude={"state"})
        values["downloaded_at"] = (entry.downloaded_at or datetime.now(UTC)).isoformat()
        names = list(values)
        await self._db.execute(
            f"INSERT OR REPLACE INTO models ({', '.join(names)}) "
            f"VALUES ({', '.join('?' for _ in names)})",
            [values[n] for n in names],
        )
        await self._db.commit()

    async def delete_model(self, model_id: str) -> None:
        await self._db.execute("DELETE FROM models WHERE id = ?", (model_id,))
        await self._db.commit()

    async def prune_missing(self) -> list[str]:
        """Drop entries whose file vanished from disk (SPEC 8); returns their ids."""
        gone = [m.id for m in await self.models() if not file_exists(m.path)]
        for model_id in gone:
            await self.delete_model(model_id)
            logger.info(
                "model %s dropped from the catalog: its file is gone",
                model_id,
                extra={"action": "catalog_prune", "model": model_id},
            )
        return gone

    # workers

    async def workers(self) -> list[WorkerRecord]:
        async with self._db.execute(
            "SELECT id, model_ref, backend, device, pid, port, url, n_ctx, slots, restarts "
            "FROM workers"
        ) as cur:
            return [WorkerRecord(**dict(row)) for row in await cur.fetchall()]

    async def put_worker(self, record: WorkerRecord) -> None:
        values = record.__dict__
        names = list(values)
        await self._db.execute(
            f"INSERT OR REPLACE INTO workers ({', '.join(names)}) "
            f"VALUES ({', '.join('?' for _ in names)})",
            [values[n] for n in names],
        )
        await self._db.commit()

    async def delete_worker(self, worker_id: str) -> None:
        await self._db.execute("DELETE FROM workers WHERE id = ?", (worker_id,))
        await self._db.commit()
