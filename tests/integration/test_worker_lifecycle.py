"""Cancellation, draining and failure of a real worker process."""

from __future__ import annotations

import json
import signal
import socket
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from shared.deadlines import format_deadline
from tests.integration.workers import start_worker
from tests.procs import Processes, Service, wait_until

pytestmark = pytest.mark.integration

LONG = {"prompt": "Write a very long story", "max_tokens": 3800}


@pytest.fixture
def worker(processes: Processes, tiny_model: Path, rbee_home: Path) -> Service:
    return start_worker(processes, tiny_model)


def slots_busy(worker: Service) -> int:
    busy: int = httpx.get(worker.url + "/v1/ready", timeout=2).json()["slots_busy"]
    return busy


def cancellations(worker: Service) -> float:
    for line in httpx.get(worker.url + "/metrics").text.splitlines():
        if line.startswith("rbee_cancellations_total "):
            return float(line.split()[1])
    return 0.0


def seconds_until_slot_free(worker: Service) -> float:
    started = time.perf_counter()
    wait_until(lambda: slots_busy(worker) == 0, timeout=5, what="slot to be free")
    return time.perf_counter() - started


def test_delete_cancels_a_running_job_and_frees_the_slot(worker: Service) -> None:
    with (
        httpx.Client(timeout=30) as client,
        client.stream(
            "POST", worker.url + "/v1/inference", json={**LONG, "job_id": "job-1"}
        ) as response,
    ):
        lines = response.iter_lines()
        assert '"started"' in next(line for line in lines if line)
        assert '"token"' in next(line for line in lines if line)
        assert client.delete(worker.url + "/v1/inference/job-1").status_code == 204
        freed_after = seconds_until_slot_free(worker)
        events = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
    end = events[-1]
    assert end["type"] == "end" and end["stop_reason"] == "cancelled"
    assert end["tokens_out"] < LONG["max_tokens"]
    assert freed_after < 1.0
    # Idempotent, also for jobs that no longer exist.
    assert httpx.delete(worker.url + "/v1/inference/job-1").status_code == 204
    assert httpx.delete(worker.url + "/v1/inference/never-was").status_code == 204


def test_client_disconnect_cancels_generation(worker: Service) -> None:
    with (
        httpx.Client(timeout=30) as client,
        client.stream(
            "POST",
            worker.url + "/v1/chat/completions",
            json={
                "model": "tiny",
                "messages": [{"role": "user", "content": "go"}],
                "max_tokens": 3800,
                "stream": True,
            },
        ) as response,
    ):
        lines = response.iter_lines()
        next(line for line in lines if '"content":" ' in line or '"content":"' in line)
        assert slots_busy(worker) == 1
    # Leaving the `with` closed the connection mid-stream.
    assert seconds_until_slot_free(worker) < 1.0
    assert cancellations(worker) == 1


def test_disconnect_of_a_non_streaming_request_cancels_it(worker: Service) -> None:
    body = json.dumps({"model": "t", "prompt": "go", "max_tokens": 3800}).encode()
    host, port = worker.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: "
            b"application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        wait_until(lambda: slots_busy(worker) == 1, timeout=5, what="job to start")
    assert seconds_until_slot_free(worker) < 1.0
    assert cancellations(worker) == 1


def test_sigterm_lets_the_running_stream_finish_then_exits_zero(worker: Service) -> None:
    with (
        httpx.Client(timeout=30) as client,
        client.stream("POST", worker.url + "/v1/inference", json=LONG) as response,
    ):
        lines = response.iter_lines()
        assert '"token"' in next(line for line in lines if '"token"' in line)
        worker.signal(signal.SIGTERM)
        events = [line for line in lines if line.startswith("data: ")]
    end = json.loads(events[-2][6:])
    assert events[-1] == "data: [DONE]"
    assert end["type"] == "end" and end["stop_reason"] == "length"
    assert end["tokens_out"] == LONG["max_tokens"]
    assert worker.wait_exit(timeout=15) == 0


def test_shutdown_request_drains_and_refuses_new_work(worker: Service) -> None:
    assert httpx.post(worker.url + "/v1/shutdown").status_code == 202
    assert worker.wait_exit(timeout=15) == 0


def test_sigterm_when_idle_exits_zero_quickly(worker: Service) -> None:
    worker.signal(signal.SIGINT)
    assert worker.wait_exit(timeout=10) == 0


def test_model_that_fails_to_load_exits_nonzero_with_a_clear_line(
    processes: Processes, tmp_path: Path, rbee_home: Path
) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\x00" * 64)
    worker = start_worker(processes, broken, healthy=False, ready=False)
    assert worker.wait_exit(timeout=20) != 0
    assert "model failed to load" in worker.log()


def test_missing_model_file_exits_nonzero(
    processes: Processes, tmp_path: Path, rbee_home: Path
) -> None:
    worker = start_worker(processes, tmp_path / "absent.gguf", healthy=False, ready=False)
    assert worker.wait_exit(timeout=20) != 0
    assert "does not exist" in worker.log()


def test_deadline_in_the_past_is_refused_and_a_short_one_ends_the_stream(
    worker: Service,
) -> None:
    past = "2020-01-01T00:00:00Z"
    response = httpx.post(
        worker.url + "/v1/inference", json=LONG, headers={"X-Request-Deadline": past}
    )
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "DEADLINE_EXCEEDED"
    soon = format_deadline(datetime.now(UTC) + timedelta(seconds=0.4))
    with httpx.stream(
        "POST",
        worker.url + "/v1/inference",
        json=LONG,
        timeout=30,
        headers={"X-Request-Deadline": soon},
    ) as stream:
        events = [json.loads(x[6:]) for x in stream.iter_lines() if x.startswith("data: {")]
    assert events[-1]["type"] == "error" and events[-1]["code"] == "DEADLINE_EXCEEDED"
    assert seconds_until_slot_free(worker) < 1.0


def test_cuda_backend_without_gpu_support_fails_clearly(
    processes: Processes, tiny_model: Path, rbee_home: Path
) -> None:
    worker = start_worker(
        processes, tiny_model, extra=["--backend", "cuda"], healthy=False, ready=False
    )
    assert worker.wait_exit(timeout=20) != 0
    assert "Backend 'cuda' is not available" in worker.log()


def test_every_log_line_is_structured_json(
    processes: Processes, tiny_model: Path, rbee_home: Path
) -> None:
    worker = start_worker(processes, tiny_model)
    httpx.post(
        worker.url + "/v1/inference",
        json={"prompt": "hi", "max_tokens": 3},
        headers={"X-Correlation-ID": "3f2c8b1e-5a4d-4c3b-9e2f-1a2b3c4d5e6f"},
    )
    worker.signal(signal.SIGTERM)
    assert worker.wait_exit(timeout=15) == 0
    lines = worker.log().splitlines()
    records = [json.loads(line) for line in lines]  # llama.cpp's lines included
    assert all({"ts", "level", "service", "action", "msg"} <= r.keys() for r in records)
    assert {r["service"] for r in records} == {"llm-worker-rbee"}
    assert any(r["action"] == "model_loaded" for r in records)
