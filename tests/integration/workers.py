"""Starting a real `llm-worker-rbee` for a test."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from tests.procs import Processes, Service, free_port


def start_worker(
    processes: Processes,
    model: Path,
    *,
    slots: int = 1,
    extra: list[str] | None = None,
    env: Mapping[str, str] | None = None,
    healthy: bool = True,
    ready: bool = True,
) -> Service:
    port = free_port()
    args = [
        "--model",
        str(model),
        "--port",
        str(port),
        "--slots",
        str(slots),
        "--worker-id",
        f"w-test-{port}",
        "--model-ref",
        "tiny",
        *(extra or []),
    ]
    worker = processes.start(
        "llm-worker-rbee", args, env=env, url=f"http://127.0.0.1:{port}", name="worker"
    )
    if healthy:
        worker.wait_healthy()
    if ready:
        worker.wait_healthy(path="/v1/ready")
    return worker
