"""Model catalog entries and the download stream (SPEC sections 5 and 8)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

ModelState = Literal["available", "ready"]


class CatalogEntry(BaseModel):
    id: str
    model_ref: str
    alias: str | None = None
    state: ModelState
    path: str | None = None
    size: int | None = None
    sha256: str | None = None
    architecture: str | None = None
    context_length: int | None = None
    parameter_count: int | None = None
    downloaded_at: datetime | None = None


class DownloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model_ref: str = Field(min_length=1, max_length=4096)


class ProgressEvent(BaseModel):
    type: Literal["progress"] = "progress"
    bytes: int
    total: int | None
    bytes_per_s: float


class DownloadEndEvent(BaseModel):
    type: Literal["end"] = "end"
    model: CatalogEntry
