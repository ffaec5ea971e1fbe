"""Settings of the queen: flags, `RBEE_QUEEN_*` variables, an optional TOML file."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from shared.settings import ServiceSettings


class QueenSettings(ServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix="RBEE_QUEEN_", extra="ignore", validate_default=True
    )

    port: int = Field(8080, ge=1024, le=65535, description="port to bind")
    public_url: str | None = Field(
        None, description="URL hives use to reach the queen (default http://host:port)"
    )
    hive_stale_after_s: float = Field(15.0, gt=0, description="no heartbeat: hive is stale")
    hive_offline_after_s: float = Field(60.0, gt=0, description="no heartbeat: hive is offline")
    drain_timeout_s: float = Field(30.0, ge=0, description="graceful drain budget")
    queue_size: int = Field(64, ge=0, description="waiting requests per model")
    default_deadline_s: float = Field(300.0, gt=0, description="deadline of a request")
    max_workers_per_model: int = Field(1, ge=1, description="workers the queen spawns per model")
    keepalive_interval_s: float = Field(5.0, gt=0, description="SSE comment interval while waiting")
    commit_after_s: float = Field(
        0.5, ge=0, description="a stream that waits longer starts with 200 and keep-alives"
    )
    cold_start_timeout_s: float = Field(600.0, gt=0, description="longest wait for a new worker")
    quarantine_s: float = Field(10.0, ge=0, description="a worker that failed is skipped this long")
    max_connections: int = Field(4096, ge=1, description="upstream connections to workers")
    ssh_hive_command: str = Field("rbee-hive", description="command that starts a hive over SSH")
    ssh_hive_port: int = Field(9200, ge=1024, le=65535, description="port of hives started by SSH")
    ssh_known_hosts: Path | None = Field(None, description="known_hosts for SSH hives")
    ssh_no_host_check: bool = Field(False, description="skip SSH host key checks (tests only)")

    @property
    def own_url(self) -> str:
        return self.public_url or f"http://{self.host}:{self.port}"
