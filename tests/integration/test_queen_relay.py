"""The queen in front of real workers (registered by a heartbeat the test sends)."""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import openai
import pytest

from tests.integration.workers import start_worker
from tests.procs import Processes, Service, wait_until
from tests.queen.stack import (
    BackgroundStream,
    beat,
    data_events,
    slots_busy,
    sse_lines,
    start_queen,
    wait_slot_free,
    worker_info,
)

pytestmark = pytest.mark.integration

WORKER_ENV = {"RBEE_WORKER_THREADS": "1"}
LONG = 3800  # tokens: a stream that runs for a while on the tiny model
# Small prompt batches stretch the processing of a 2000-token prompt on the tiny model to
# one to three seconds, so a test can act while a worker holds a job but has no token yet.
SLOW_PROMPT_ENV = {**WORKER_ENV, "RBEE_WORKER_N_BATCH": "32"}
LONG_PROMPT = [{"role": "user", "content": "Summarise: " + "the story " * 1000}]


@pytest.fixture
def one(
    processes: Processes, tiny_model: Path, rbee_home: Path
) -> Iterator[tuple[Service, Service]]:
    worker = start_worker(processes, tiny_model, env=WORKER_ENV)
    queen = start_queen(processes, rbee_home / "queen", env={"RBEE_QUEEN_QUEUE_SIZE": "1"})
    beat(queen, "h1", [worker_info(worker)])
    yield queen, worker


@pytest.fixture
def sdks() -> Iterator[list[openai.OpenAI]]:
    made: list[openai.OpenAI] = []
    yield made
    for sdk in made:
        sdk.close()


def client(queen: Service, sdks: list[openai.OpenAI]) -> openai.OpenAI:
    sdks.append(openai.OpenAI(base_url=queen.url + "/v1", api_key="unused", max_retries=0))
    return sdks[-1]


def test_the_openai_sdk_gets_models_chat_and_completions(
    one: tuple[Service, Service], sdks: list[openai.OpenAI]
) -> None:
    queen, _ = one
    sdk = client(queen, sdks)
    assert [m.id for m in sdk.models.list()] == ["tiny"]
    messages = [{"role": "user", "content": "Hello there"}]
    chat = sdk.chat.completions.create(model="tiny", messages=messages, max_tokens=8)  # type: ignore[arg-type]
    assert chat.choices[0].message.role == "assistant" and chat.choices[0].message.content
    assert chat.choices[0].finish_reason in ("stop", "length")
    assert chat.usage is not None and chat.usage.completion_tokens >= 1

    chunks = list(
        sdk.chat.completions.create(
            model="tiny",
            messages=messages,
            max_tokens=8,  # type: ignore[call-overload]
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-2].choices[0].finish_reason in ("stop", "length")
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    plain = list(
        sdk.chat.completions.create(
            model="tiny",
            messages=messages,
            max_tokens=8,  # type: ignore[call-overload]
            stream=True,
        )
    )
    assert all(c.usage is None for c in plain) and plain[-1].choices[0].finish_reason

    done = sdk.completions.create(model="tiny", prompt="Once upon a time", max_tokens=6)
    assert done.choices[0].text and done.usage is not None
    streamed = list(
        sdk.completions.create(model="tiny", prompt="Once upon", max_tokens=6, stream=True)
    )
    assert "".join(c.choices[0].text for c in streamed if c.choices)
    assert streamed[-1].choices[0].finish_reason in ("stop", "length")

    with pytest.raises(openai.BadRequestError) as too_long:
        sdk.completions.create(model="tiny", prompt="x", max_tokens=10_000_000)
    assert too_long.value.body["code"] == "CONTEXT_LENGTH_EXCEEDED"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        sdk.chat.completions.create(model="nope", messages=messages)  # type: ignore[arg-type]


def test_inference_responses_carry_overhead_and_correlation_id(
    one: tuple[Service, Service],
) -> None:
    queen, _ = one
    cid = "0b9a4c1e-8f65-4f4a-9c2e-7d1f3b5a6c80"
    response = httpx.post(
        queen.url + "/v1/completions",
        json={"model": "tiny", "prompt": "hi", "max_tokens": 3},
        headers={"X-Correlation-ID": cid},
        timeout=30,
    )
    assert response.status_code == 200
    assert response.headers["x-correlation-id"] == cid
    assert 0 <= float(response.headers["x-rbee-overhead-ms"]) < 1000


def test_a_worker_killed_before_its_first_byte_is_invisible(
    processes: Processes, tiny_model: Path, rbee_home: Path, sdks: list[openai.OpenAI]
) -> None:
    a = start_worker(processes, tiny_model, env=WORKER_ENV)
    b = start_worker(processes, tiny_model, env=WORKER_ENV)
    queen = start_queen(processes, rbee_home / "queen")
    beat(queen, "h1", [worker_info(a), worker_info(b)])
    a.proc.kill()
    a.proc.wait()
    sdk = client(queen, sdks)
    for _ in range(4):
        out = sdk.completions.create(model="tiny", prompt="Hello", max_tokens=4)
        assert out.choices[0].text
    metrics = httpx.get(queen.url + "/metrics").text
    assert 'rbee_failovers_total{model="tiny"} 1.0' in metrics


def test_a_worker_killed_while_processing_the_prompt_is_invisible(
    processes: Processes, tiny_model: Path, rbee_home: Path
) -> None:
    # The kill lands after the worker took the job (its slot is busy and it has sent its
    # role delta) and before its first token.
    a = start_worker(processes, tiny_model, env=SLOW_PROMPT_ENV)
    b = start_worker(processes, tiny_model, env=SLOW_PROMPT_ENV)
    queen = start_queen(processes, rbee_home / "queen")
    beat(queen, "h1", [worker_info(a), worker_info(b)])
    body = {"model": "tiny", "messages": LONG_PROMPT, "max_tokens": 16, "stream": True}
    lines: list[tuple[float, str]] = []

    def consume() -> None:
        with httpx.stream("POST", queen.url + "/v1/chat/completions", json=body, timeout=60) as r:
            assert r.status_code == 200, r.read()
            lines.extend((time.monotonic(), line) for line in sse_lines(r))

    reader = threading.Thread(target=consume)
    reader.start()
    holder = wait_until(
        lambda: next((w for w in (a, b) if slots_busy(w) == 1), None),
        timeout=10,
        interval=0.005,
        what="a worker holding the job",
    )
    assert isinstance(holder, Service)
    holder.proc.kill()
    killed = time.monotonic()
    reader.join(60)

    data = [(t, line) for t, line in lines if line.startswith("data: ")]
    assert data and data[0][0] > killed  # nothing of the dead worker reached the client
    events = data_events([line for _, line in data])
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all("error" not in c for c in chunks), chunks
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    survivor = b if holder is a else a
    assert survivor.proc.poll() is None
    wait_slot_free(survivor)
    metrics = httpx.get(queen.url + "/metrics").text
    assert 'rbee_failovers_total{model="tiny"} 1.0' in metrics


def test_a_worker_killed_mid_stream_gives_an_error_event_then_done(
    one: tuple[Service, Service],
) -> None:
    queen, worker = one
    body = {"model": "tiny", "prompt": "Tell me a long story", "max_tokens": LONG, "stream": True}
    lines: list[str] = []
    with httpx.stream("POST", queen.url + "/v1/completions", json=body, timeout=30) as response:
        assert response.status_code == 200
        for line in sse_lines(response):
            lines.append(line)
            if len(lines) == 3:
                worker.proc.kill()
    events = data_events(lines)
    assert events[-1] == "[DONE]"
    assert events[-2]["error"]["code"] == "WORKER_FAILED"
    assert events[-2]["error"]["correlation_id"] == response.headers["x-correlation-id"]
    assert all("choices" in e for e in events[:-2])


def test_client_disconnect_frees_the_worker_slot_within_1s(one: tuple[Service, Service]) -> None:
    queen, worker = one
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "Go"}],
        "max_tokens": LONG,
        "stream": True,
    }
    with httpx.stream(
        "POST", queen.url + "/v1/chat/completions", json=body, timeout=30
    ) as response:
        assert response.status_code == 200, response.read()
        lines = sse_lines(response)  # kept open: closing the iterator closes the stream
        assert all(next(lines).startswith("data: ") for _ in range(3))
        assert slots_busy(worker) == 1
    left = time.monotonic()
    wait_slot_free(worker, timeout=1.0)
    assert time.monotonic() - left < 1.0


def test_a_client_that_leaves_during_prompt_processing_frees_the_slot_within_1s(
    processes: Processes, tiny_model: Path, rbee_home: Path
) -> None:
    # The queen holds the worker's preamble back until its first token, so a client that
    # leaves now has received nothing; the worker must still stop at once.
    worker = start_worker(processes, tiny_model, env=SLOW_PROMPT_ENV)
    queen = start_queen(processes, rbee_home / "queen", env={"RBEE_QUEEN_COMMIT_AFTER_S": "0"})
    beat(queen, "h1", [worker_info(worker)])
    body = {"model": "tiny", "messages": LONG_PROMPT, "max_tokens": 16, "stream": True}
    with httpx.stream(
        "POST", queen.url + "/v1/chat/completions", json=body, timeout=30
    ) as response:
        assert response.status_code == 200
        wait_until(lambda: slots_busy(worker) == 1, timeout=10, interval=0.005, what="busy")
    left = time.monotonic()
    wait_slot_free(worker, timeout=1.0)
    assert time.monotonic() - left < 1.0
    metrics = httpx.get(queen.url + "/metrics").text
    assert 'rbee_cancellations_total{model="tiny"} 1.0' in metrics


def test_delete_task_cancels_the_job_at_the_worker(one: tuple[Service, Service]) -> None:
    queen, worker = one
    body = {"model": "tiny", "prompt": "Tell me a long story", "max_tokens": LONG}
    lines: list[str] = []
    with httpx.stream("POST", queen.url + "/v2/tasks", json=body, timeout=30) as response:
        assert response.status_code == 200
        for line in sse_lines(response):
            lines.append(line)
            if len(lines) == 2:
                job_id = data_events(lines)[0]["job_id"]
                assert httpx.delete(f"{queen.url}/v2/tasks/{job_id}").status_code == 204
    events = data_events(lines)
    assert events[0]["type"] == "started" and events[0]["worker_id"] == worker_info(worker)["id"]
    assert events[-1] == "[DONE]"
    assert events[-2]["type"] == "end" and events[-2]["stop_reason"] == "cancelled"
    assert events[-2]["tokens_out"] < LONG
    wait_slot_free(worker)


def test_a_full_queue_answers_503_with_retry_after(one: tuple[Service, Service]) -> None:
    queen, worker = one
    long_body = {"model": "tiny", "prompt": "story", "max_tokens": LONG, "stream": True}
    first_line = threading.Event()
    queued_line = threading.Event()
    outcome: dict[str, list[str]] = {}

    def run(name: str, ready: threading.Event) -> None:
        with httpx.stream("POST", queen.url + "/v1/completions", json=long_body, timeout=60) as r:
            lines = []
            for line in sse_lines(r):
                lines.append(line)
                ready.set()
            outcome[name] = lines

    holder = threading.Thread(target=run, args=("holder", first_line))
    holder.start()
    assert first_line.wait(10)
    waiter = threading.Thread(target=run, args=("waiter", queued_line))
    waiter.start()
    assert queued_line.wait(10)  # the waiter got 200 and keep-alives: it sits in the queue
    refused = httpx.post(
        queen.url + "/v1/completions",
        json={"model": "tiny", "prompt": "x", "max_tokens": 2},
        timeout=10,
    )
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "NO_CAPACITY"
    assert int(refused.headers["retry-after"]) >= 1
    holder.join(60)
    waiter.join(60)
    assert outcome["waiter"][0].startswith(": queued position=1")
    assert data_events(outcome["waiter"])[-1] == "[DONE]"
    wait_until(lambda: slots_busy(worker) == 0, timeout=5, what="slot free")


def test_a_request_whose_deadline_passes_in_the_queue_gets_504(
    one: tuple[Service, Service],
) -> None:
    queen, worker = one
    long_body = {"model": "tiny", "prompt": "story", "max_tokens": LONG, "stream": True}
    streaming = threading.Event()

    def hold() -> None:
        with httpx.stream("POST", queen.url + "/v1/completions", json=long_body, timeout=60) as r:
            for _ in sse_lines(r):
                streaming.set()

    holder = threading.Thread(target=hold)
    holder.start()
    assert streaming.wait(10)
    deadline = datetime.now(UTC) + timedelta(seconds=1)
    header = {"X-Request-Deadline": deadline.isoformat()}
    asked = time.monotonic()
    late = httpx.post(
        queen.url + "/v1/completions",
        headers=header,
        timeout=10,
        json={"model": "tiny", "prompt": "x", "max_tokens": 2},
    )
    assert late.status_code == 504 and late.json()["error"]["code"] == "DEADLINE_EXCEEDED"
    assert time.monotonic() - asked < 3
    # Streaming: the wait already began with 200, so the deadline is an error event.
    deadline = datetime.now(UTC) + timedelta(seconds=1)
    header = {"X-Request-Deadline": deadline.isoformat()}
    with httpx.stream(
        "POST",
        queen.url + "/v1/completions",
        headers=header,
        timeout=10,
        json={"model": "tiny", "prompt": "x", "max_tokens": 2, "stream": True},
    ) as r:
        assert r.status_code == 200
        events = data_events(list(sse_lines(r)))
    assert events[-1] == "[DONE]" and events[-2]["error"]["code"] == "DEADLINE_EXCEEDED"
    holder.join(60)
    wait_until(lambda: slots_busy(worker) == 0, timeout=5, what="slot free")


def test_a_client_that_gives_up_on_a_non_streaming_request_frees_the_slot(
    one: tuple[Service, Service],
) -> None:
    queen, worker = one
    body = {"model": "tiny", "prompt": "Tell me a long story", "max_tokens": LONG}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(queen.url + "/v1/completions", json=body, timeout=httpx.Timeout(5, read=0.5))
    wait_slot_free(worker, timeout=1.0)  # a 3800-token answer would take seconds
    metrics = httpx.get(queen.url + "/metrics").text
    assert 'rbee_cancellations_total{model="tiny"} 1.0' in metrics


def _request_waiting_for_its_body(url: str, path: str, body: bytes) -> socket.socket:
    """A request whose headers the server has read and whose body it now waits for.

    `Expect: 100-continue` makes uvicorn answer `100 Continue` when the app first asks for
    the body, so the test knows the request is in the app before the stop signal.
    """
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n".encode()
    )
    interim = b""
    while not interim.endswith(b"\r\n\r\n"):
        interim += sock.recv(1)
    assert interim.startswith(b"HTTP/1.1 100"), interim
    return sock


def _read_response(sock: socket.socket) -> tuple[int, bytes]:
    raw = b""
    while chunk := sock.recv(65536):
        raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def _refused(url: str) -> bool:
    try:
        httpx.get(url + "/health", timeout=1)
    except httpx.ConnectError:
        return True
    return False


def test_sigterm_refuses_new_inference_and_lets_the_running_stream_finish(
    one: tuple[Service, Service],
) -> None:
    queen, worker = one
    body = {"model": "tiny", "prompt": "Tell me a story", "max_tokens": 1500}
    stream = BackgroundStream(queen.url, body)
    assert stream.streaming.wait(30), stream.lines
    chat = {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}
    late = _request_waiting_for_its_body(
        queen.url, "/v1/chat/completions", json.dumps(chat).encode()
    )
    queen.signal(signal.SIGTERM)
    at_signal = len(stream.lines)
    wait_until(lambda: _refused(queen.url), timeout=10, what="the queen to stop listening")
    with pytest.raises(httpx.ConnectError):  # new connections are not accepted at all
        httpx.post(queen.url + "/v1/chat/completions", json=chat, timeout=5)
    late.sendall(json.dumps(chat).encode())
    status, answer = _read_response(late)
    late.close()
    assert status == 503 and json.loads(answer)["error"]["code"] == "SHUTTING_DOWN"

    events = stream.join()
    assert len(stream.lines) > at_signal + 10  # the stream went on after the signal
    assert events[-1] == "[DONE]"
    assert events[-2]["type"] == "end" and events[-2]["tokens_out"] == 1500
    assert queen.wait_exit(30) == 0
    wait_slot_free(worker)

    # Every line the queen wrote is one JSON log record (stdout and stderr both).
    records = [json.loads(line) for line in queen.log().splitlines() if line.strip()]
    assert records and all(
        {"ts", "level", "service", "action", "msg"} <= r.keys() for r in records
    ), records
    assert {r["service"] for r in records} == {"queen-rbee"}
    assert {"start", "drain", "stop"} <= {r["action"] for r in records}
