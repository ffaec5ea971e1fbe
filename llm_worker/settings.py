"""Settings of one worker process (env prefix `RBEE_WORKER_`)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings


class WorkerSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="RBEE_WORKER_")

    port: int = Field(8001, ge=1024, le=65535, description="port to bind")
    worker_id: str = Field("worker", pattern=r"^[A-Za-z0-9._-]{1,128}$", description="worker id")
    model: Path = Field(description="path of the GGUF file to serve")
    model_ref: str = Field("", description="the reference the model was requested by")
    backend: Literal["cpu", "cuda", "metal"] = Field("cpu", description="cpu, cuda or metal")
    device: int = Field(0, ge=0, description="GPU index for cuda/metal")
    callback_url: str | None = Field(None, description="the hive's ready endpoint (full URL)")
    n_ctx: int = Field(0, ge=0, description="context length per slot; 0 = model's, max 4096")
    n_batch: int = Field(512, ge=1, description="prompt tokens per decode call")
    threads: int = Field(0, ge=0, description="CPU threads; 0 = physical cores")
    flash_attn: Literal["auto", "on", "off"] = Field(
        "auto", description="flash attention: auto (llama.cpp decides), on or off"
    )
    slots: int = Field(1, ge=1, le=64, description="concurrent requests (one context each)")
    embeddings: bool = Field(
        False, description="create the /v1/embeddings context at load, not on first use"
    )
    drain_timeout_s: float = Field(30.0, ge=0, description="grace for in-flight work at stop")
    orphan_grace_s: float = Field(60.0, ge=0, description="life without a hive before exiting")
    callback_attempts: int = Field(10, ge=1, description="tries of the ready callback")

    @property
    def effective_model_ref(self) -> str:
        return self.model_ref or f"file:{self.model}"

    @property
    def advertised_url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{host}:{self.port}"
