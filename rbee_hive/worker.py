"""One worker as the hive sees it: its record, how it is started, what it inherits.

A :class:`Worker` is mutated only by its supervisor task in :mod:`rbee_hive.pool`
(and its `ready` event by the ready callback); everything else reads it.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from datetime import datetime

from rbee_hive.catalog import WorkerRecord
from rbee_hive.process import WorkerProcess
from rbee_hive.settings import HiveSettings
from rbee_hive.standby import Claimed
from shared.workers import Slots, WorkerInfo, WorkerState


@dataclass
class Worker:
    id: str
    model_ref: str
    backend: str
    device: int
    n_ctx: int | None
    slots: int | None
    port: int
    url: str
    state: WorkerState = "loading"
    model_path: str | None = None
    model_size: int = 0
    process: WorkerProcess | None = None
    standby: Claimed | None = None  # a waiting process claimed for the first launch
    slots_total: int = 1
    slots_busy: int = 0
    restarts: int = 0
    restart_times: list[float] = field(default_factory=list)
    last_health_check: datetime | None = None
    last_active: float = field(default_factory=time.monotonic)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    def info(self) -> WorkerInfo:
        return WorkerInfo(
            id=self.id,
            state=self.state,
            pid=self.process.pid if self.process else None,
            port=self.port,
            url=self.url,
            model=self.model_ref,
            backend=self.backend,
            device=self.device,
            slots=Slots(total=self.slots_total, busy=self.slots_busy),
            restarts=self.restarts,
            last_health_check=self.last_health_check,
        )

    def record(self) -> WorkerRecord:
        return WorkerRecord(
            id=self.id,
            model_ref=self.model_ref,
            backend=self.backend,
            device=self.device,
            pid=self.process.pid if self.process else None,
            port=self.port,
            url=self.url,
            n_ctx=self.n_ctx,
            slots=self.slots,
            restarts=self.restarts,
        )


def worker_env(settings: HiveSettings) -> dict[str, str]:
    """The hive's environment, plus its credentials in the worker's own variables."""
    env = dict(os.environ)
    if settings.api_key_file is not None:
        env["RBEE_WORKER_API_KEY_FILE"] = str(settings.api_key_file.resolve())
    if settings.jwt_secret_file is not None:
        env["RBEE_WORKER_JWT_SECRET_FILE"] = str(settings.jwt_secret_file.resolve())
    if settings.jwt_public_key_file is not None:
        env["RBEE_WORKER_JWT_PUBLIC_KEY_FILE"] = str(settings.jwt_public_key_file.resolve())
    if settings.api_key is not None:
        env["RBEE_API_KEY"] = settings.api_key.get_secret_value()
    return env


def launch_args(worker: Worker, host: str, hive_url: str) -> list[str]:
    """The `llm-worker-rbee` command line for this worker."""
    args = [
        "--worker-id", worker.id,
        "--model", worker.model_path or "",
        "--model-ref", worker.model_ref,
        "--backend", worker.backend,
        "--device", str(worker.device),
        "--port", str(worker.port),
        "--host", host,
        "--callback-url", hive_url + "/v1/workers/ready",
    ]  # fmt: skip
    if worker.n_ctx is not None:
        args += ["--n-ctx", str(worker.n_ctx)]
    if worker.slots is not None:
        args += ["--slots", str(worker.slots)]
    return args
