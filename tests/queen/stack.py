"""Helpers for integration tests that run a real queen (and workers, hives) as processes."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx

from tests.procs import Processes, Service, free_port, wait_until


def start_queen(
    processes: Processes,
    data_dir: Path,
    *,
    env: Mapping[str, str] | None = None,
    port: int | None = None,
) -> Service:
    port = port or free_port()
    queen = processes.start(
        "queen-rbee",
        ["--port", str(port), "--data-dir", str(data_dir)],
        env={"RBEE_QUEEN_KEEPALIVE_INTERVAL_S": "1", **(env or {})},
        url=f"http://127.0.0.1:{port}",
        name="queen",
    )
    queen.wait_healthy()
    return queen


def worker_info(worker: Service, model: str = "tiny", slots: int = 1) -> dict[str, Any]:
    port = int(worker.url.rsplit(":", 1)[1])
    return {
        "id": f"w-test-{port}",
        "state": "idle",
        "url": worker.url,
        "model": model,
        "slots": {"total": slots, "busy": 0},
        "pid": worker.pid,
    }


def beat(queen: Service, hive_id: str, workers: list[dict[str, Any]]) -> None:
    """Stand in for a hive: one heartbeat with the given workers."""
    body = {"url": "http://127.0.0.1:9", "workers": workers, "models": []}
    response = httpx.post(f"{queen.url}/v2/hives/{hive_id}/heartbeat", json=body, timeout=5)
    assert response.status_code == 200, response.text


def sse_lines(response: httpx.Response) -> Iterator[str]:
    """`data:` payloads and `:` comments of an SSE response, as they arrive."""
    for line in response.iter_lines():
        if line:
            yield line


class BackgroundStream:
    """A native task stream read on a thread: `lines` fills as events arrive, `streaming`
    is set at the first token. `join()` waits for its end."""

    def __init__(self, url: str, body: dict[str, Any], timeout: float = 90) -> None:
        self.lines: list[str] = []
        self.streaming = threading.Event()
        self._thread = threading.Thread(target=self._read, args=(url, body, timeout))
        self._thread.start()

    def _read(self, url: str, body: dict[str, Any], timeout: float) -> None:
        with httpx.stream("POST", url + "/v2/tasks", json=body, timeout=timeout) as response:
            for line in sse_lines(response):
                self.lines.append(line)
                if '"type":"token"' in line:
                    self.streaming.set()

    def join(self, timeout: float = 60) -> list[Any]:
        """The stream's data events, once it ended."""
        self._thread.join(timeout)
        return data_events(self.lines)


def data_events(lines: list[str]) -> list[Any]:
    out: list[Any] = []
    for line in lines:
        if line.startswith("data: "):
            payload = line[6:]
            out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


def slots_busy(worker: Service) -> int:
    busy: int = httpx.get(worker.url + "/v1/ready", timeout=2).json()["slots_busy"]
    return busy


def wait_slot_free(worker: Service, timeout: float = 1.0) -> None:
    wait_until(lambda: slots_busy(worker) == 0, timeout=timeout, what="worker slot free")


HIVE_ENV = {
    "RBEE_HIVE_HEARTBEAT_INTERVAL_S": "0.5",
    "RBEE_WORKER_THREADS": "1",
    "RBEE_WORKER_ORPHAN_GRACE_S": "10",
}
FAST_QUEEN = {"RBEE_QUEEN_HIVE_STALE_AFTER_S": "3", "RBEE_QUEEN_HIVE_OFFLINE_AFTER_S": "20"}


def start_hive(
    processes: Processes,
    queen: Service,
    hive_id: str,
    data_dir: Path,
    *,
    env: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
    register: bool = True,
) -> Service:
    """A hive that registers with `queen` itself (or, with `register=False`, does not)."""
    port = free_port()
    announce = ["--queen-url", queen.url] if register else []
    hive = processes.start(
        "rbee-hive",
        [
            "--port",
            str(port),
            "--hive-id",
            hive_id,
            *announce,
            "--data-dir",
            str(data_dir),
            "--worker-port-start",
            str(free_port()),
        ],
        env={**HIVE_ENV, **(env or {})},
        url=f"http://127.0.0.1:{port}",
        name=f"hive-{hive_id}",
    )
    hive.wait_healthy()
    if register:
        wait_until(
            lambda: hive_state(queen, hive_id, headers) == "online", timeout=15, what="online"
        )
    return hive


def hive_state(
    queen: Service, hive_id: str, headers: Mapping[str, str] | None = None
) -> str | None:
    response = httpx.get(f"{queen.url}/v2/hives/{hive_id}", timeout=2, headers=headers)
    return response.json()["state"] if response.status_code == 200 else None


def queen_workers(queen: Service) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = httpx.get(queen.url + "/v2/workers", timeout=5).json()["data"]
    return data


def run_task(queen: Service, model: str, prompt: str = "Hello", max_tokens: int = 4) -> list[Any]:
    """One native task to its end; the events, `[DONE]` included."""
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens}
    with httpx.stream("POST", queen.url + "/v2/tasks", json=body, timeout=60) as response:
        assert response.status_code == 200, response.read()
        return data_events(list(sse_lines(response)))


def started(events: list[Any]) -> dict[str, Any]:
    found: dict[str, Any] = next(
        e for e in events if isinstance(e, dict) and e["type"] == "started"
    )
    return found
