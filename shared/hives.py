"""Messages between hives and the queen: capabilities, registration, heartbeats."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.workers import WorkerInfo

HIVE_ID_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
# the pattern allows no more; the length check alone gives the clearer message
HIVE_ID_MAX_LENGTH = 63


class CudaDevice(BaseModel):
    index: int
    name: str
    vram_total_bytes: int
    vram_free_bytes: int


class BackendInfo(BaseModel):
    name: Literal["cpu", "cuda", "metal"]
    devices: list[int] | list[CudaDevice]


class Capabilities(BaseModel):
    id: str
    version: str
    backends: list[BackendInfo]
    ram_total_bytes: int
    ram_free_bytes: int
    disk_free_bytes: int


class HiveRegistration(BaseModel):
    """`PUT /v2/hives/{id}`: a hive registering itself (idempotent upsert)."""

    model_config = ConfigDict(extra="ignore")
    url: str = Field(min_length=1, max_length=512)
    version: str = Field(max_length=64)
    capabilities: Capabilities | None = None


class Heartbeat(BaseModel):
    """`POST /v2/hives/{id}/heartbeat`: the full truth about one hive, every interval."""

    model_config = ConfigDict(extra="ignore")
    url: str | None = None
    workers: list[WorkerInfo]
    capabilities: Capabilities | None = None
    models: list[str] = Field(default_factory=list, description="model_refs on disk")


class SshTarget(BaseModel):
    model_config = ConfigDict(extra="forbid")
    host: str = Field(min_length=1, max_length=253)
    port: int = Field(22, ge=1, le=65535)
    user: str = Field(min_length=1, max_length=64)
    key_path: str | None = Field(None, max_length=4096)


class HiveCreate(BaseModel):
    """`POST /v2/hives`: add a hive by URL or by SSH."""

    model_config = ConfigDict(extra="forbid")
    id: str = Field(pattern=HIVE_ID_PATTERN)
    url: str | None = Field(None, max_length=512)
    ssh: SshTarget | None = None


HiveState = Literal["online", "stale", "offline"]


class HiveInfo(BaseModel):
    id: str
    url: str | None
    state: HiveState
    last_heartbeat: datetime | None
    capabilities: Capabilities | None = None
