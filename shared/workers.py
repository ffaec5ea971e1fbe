"""Messages about workers: the hive's view, spawn requests, readiness and callbacks."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

WorkerState = Literal["downloading", "loading", "idle", "busy", "draining", "failed"]
Backend = Literal["cpu", "cuda", "metal"]
KNOWN_BACKENDS: tuple[str, ...] = ("cpu", "cuda", "metal")


class Slots(BaseModel):
    total: int
    busy: int


class WorkerInfo(BaseModel):
    """A worker as its hive reports it (`GET /v1/workers`, heartbeats)."""

    id: str
    state: WorkerState
    pid: int | None = None
    port: int | None = None
    url: str | None = None
    model: str
    backend: str = "cpu"
    device: int = 0
    slots: Slots
    restarts: int = 0
    last_health_check: datetime | None = None


class SpawnRequest(BaseModel):
    """`POST /v1/workers/spawn` at a hive."""

    model_config = ConfigDict(extra="forbid")
    model_ref: str = Field(min_length=1, max_length=512)
    backend: str | None = None
    device: int | None = Field(None, ge=0)
    n_ctx: int | None = Field(None, ge=16, le=1_048_576)
    slots: int | None = Field(None, ge=1, le=64)


class ReadyCallback(BaseModel):
    """`POST /v1/workers/ready`: a worker telling its hive it has loaded its model."""

    worker_id: str = Field(min_length=1, max_length=128)
    url: str = Field(min_length=1, max_length=512)
    model_ref: str = Field(min_length=1, max_length=512)
    slots_total: int = Field(ge=1)


class Readiness(BaseModel):
    """`GET /v1/ready` at a worker: 200 when ready, 503 with this body otherwise."""

    ready: bool
    state: Literal["loading", "ready", "draining", "failed"]
    model_ref: str
    slots_total: int
    slots_busy: int
    progress: float
