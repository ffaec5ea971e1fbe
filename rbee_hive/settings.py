"""The hive's settings: every field is a flag and an `RBEE_HIVE_*` variable (SPEC 1, 7)."""

from __future__ import annotations

import re
import socket
import sys
from pathlib import Path

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import SettingsConfigDict

from shared.hives import HIVE_ID_PATTERN
from shared.settings import ServiceSettings


def default_hive_id() -> str:
    """The host name made DNS-safe: lower case, `[a-z0-9-]`, at most 63 characters."""
    name = re.sub(r"[^a-z0-9-]+", "-", socket.gethostname().split(".")[0].lower())
    return name.strip("-")[:63].strip("-") or "hive"


def default_worker_command() -> str:
    return str(Path(sys.executable).parent / "llm-worker-rbee")


class HiveSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="RBEE_HIVE_", extra="ignore")

    port: int = Field(9200, ge=1024, le=65535, description="port to bind")
    hive_id: str = Field(
        default_factory=default_hive_id,
        pattern=HIVE_ID_PATTERN,
        validation_alias=AliasChoices("hive_id", "RBEE_HIVE_ID"),
        description="this hive's id (env RBEE_HIVE_ID); default the host name",
    )
    advertise_url: str | None = Field(
        None, description="base URL others reach this hive at; default http://host:port"
    )
    queen_url: str | None = Field(None, description="queen to register with and heartbeat to")
    worker_command: str = Field(
        default_factory=default_worker_command, description="path of llm-worker-rbee"
    )
    worker_host: str | None = Field(None, description="address workers bind; default --host")
    worker_port_start: int = Field(8001, ge=1024, le=65535, description="first worker port")
    standby_worker: bool = Field(
        True, description="keep one worker process imported and waiting: cold starts only load"
    )
    heartbeat_interval_s: float = Field(5.0, gt=0, description="heartbeat to the queen")
    health_check_interval_s: float = Field(10.0, gt=0, description="worker health checks")
    health_check_timeout_s: float = Field(5.0, gt=0, description="one health check's limit")
    health_check_failures: int = Field(3, ge=1, description="failed checks before a kill")
    ready_timeout_s: float = Field(60.0, gt=0, description="base time for a worker to load")
    ready_timeout_per_gib_s: float = Field(30.0, ge=0, description="extra load time per GiB")
    worker_idle_timeout_s: float = Field(300.0, ge=0, description="stop idle workers; 0 never")
    restart_limit: int = Field(3, ge=0, description="restarts of a crashed worker in 5 min")
    restart_window_s: float = Field(300.0, gt=0, description="window of the restart limit")
    restart_backoff_s: float = Field(1.0, ge=0, description="first restart delay (doubling)")
    download_stall_timeout_s: float = Field(60.0, gt=0, description="a stall fails an attempt")
    download_attempts: int = Field(5, ge=1, description="attempts per download")
    download_backoff_s: float = Field(1.0, ge=0, description="first retry delay (doubling)")
    drain_timeout_s: float = Field(30.0, ge=0, description="graceful stop budget, then SIGKILL")

    @field_validator("worker_command")
    @classmethod
    def _command_exists(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must name the llm-worker-rbee executable")
        return value

    @field_validator("queen_url", "advertise_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/") if value else value

    @property
    def base_url(self) -> str:
        if self.advertise_url:
            return self.advertise_url
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{host}:{self.port}"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def logs_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def db_path(self) -> Path:
        return self.data_dir / "hive.db"
