"""A real worker process on the tiny model: streaming, OpenAI compatibility, slots."""

from __future__ import annotations

import base64
import json
import struct
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from tests.integration.workers import start_worker
from tests.procs import Processes, Service

pytestmark = pytest.mark.integration


@pytest.fixture
def worker(processes: Processes, tiny_model: Path, rbee_home: Path) -> Service:
    return start_worker(processes, tiny_model)


def native_events(
    client: httpx.Client, url: str, body: dict[str, object]
) -> Iterator[tuple[float, dict[str, object] | str]]:
    with client.stream("POST", url + "/v1/inference", json=body) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["x-accel-buffering"] == "no"
        for line in response.iter_lines():
            if line.startswith("data: "):
                data = line[6:]
                yield time.perf_counter(), ("[DONE]" if data == "[DONE]" else json.loads(data))


def test_tokens_arrive_incrementally(worker: Service) -> None:
    with httpx.Client(timeout=30) as client:
        started = time.perf_counter()
        events = list(
            native_events(client, worker.url, {"prompt": "Tell me a story", "max_tokens": 1500})
        )
    kinds = [e["type"] if isinstance(e, dict) else e for _, e in events]
    assert kinds[0] == "started" and kinds[-2:] == ["end", "[DONE]"]
    tokens = [(t, e) for t, e in events if isinstance(e, dict) and e["type"] == "token"]
    assert [e["i"] for _, e in tokens] == list(range(len(tokens)))
    end = events[-2][1]
    assert isinstance(end, dict) and end["tokens_out"] == 1500 and end["stop_reason"] == "length"
    first, last = tokens[0][0] - started, tokens[-1][0] - started
    # Streamed, not buffered: the first token comes long before the last one.
    assert first < last / 4, (first, last)


def test_openai_client_chat_and_completions(worker: Service) -> None:
    client = openai.OpenAI(base_url=worker.url + "/v1", api_key="unused-in-dev-mode")
    chat = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Hello"}], max_tokens=12
    )
    assert chat.choices[0].message.role == "assistant"
    assert chat.choices[0].message.content
    assert chat.choices[0].finish_reason == "length"
    assert chat.usage is not None and chat.usage.completion_tokens == 12

    stream = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "Hello"}],
        max_tokens=10,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 10

    completion = client.completions.create(
        model="tiny", prompt="Once upon", max_tokens=8, stop=["\n"]
    )
    assert completion.choices[0].text and completion.usage is not None
    streamed = client.completions.create(
        model="tiny", prompt="Once upon", max_tokens=8, stream=True
    )
    pieces = list(streamed)
    assert all(p.usage is None for p in pieces)  # no usage chunk unless asked for
    assert "".join(p.choices[0].text for p in pieces)


def test_openai_errors_reach_the_client_as_typed_exceptions(worker: Service) -> None:
    client = openai.OpenAI(base_url=worker.url + "/v1", api_key="x", max_retries=0)
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model="tiny", prompt="x", max_tokens=100_000)
    assert info.value.body["code"] == "CONTEXT_LENGTH_EXCEEDED"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model="tiny", prompt="x", temperature=3.0)
    assert info.value.body["param"] == "temperature"  # type: ignore[index]


def test_busy_worker_answers_all_slots_busy(worker: Service) -> None:
    with httpx.Client(timeout=30) as client:
        events = native_events(client, worker.url, {"prompt": "long", "max_tokens": 3800})
        next(events), next(events)  # started, first token: the only slot is taken
        response = client.post(
            worker.url + "/v1/inference", json={"prompt": "second", "max_tokens": 5}
        )
        assert response.status_code == 503
        assert response.headers["retry-after"] == "1"
        error = response.json()["error"]
        assert error["code"] == "ALL_SLOTS_BUSY"
        assert error["details"] == {"slots_total": 1, "slots_busy": 1}
        assert error["correlation_id"] == response.headers["x-correlation-id"]
        for _ in events:
            pass


def test_two_slots_serve_two_requests_at_once(
    processes: Processes, tiny_model: Path, rbee_home: Path
) -> None:
    worker = start_worker(processes, tiny_model, slots=2)
    with httpx.Client(timeout=30) as client:
        first = native_events(client, worker.url, {"prompt": "one", "max_tokens": 3000})
        second = native_events(client, worker.url, {"prompt": "two", "max_tokens": 3000})
        next(first), next(first), next(second), next(second)
        ready = client.get(worker.url + "/v1/ready").json()
        assert (ready["slots_total"], ready["slots_busy"]) == (2, 2)
        for events in (first, second):
            assert [e for _, e in events][-1] == "[DONE]"


def test_correlation_id_is_reused_when_valid(worker: Service) -> None:
    cid = "3f2c8b1e-5a4d-4c3b-9e2f-1a2b3c4d5e6f"
    response = httpx.get(worker.url + "/v1/ready", headers={"X-Correlation-ID": cid})
    assert response.headers["x-correlation-id"] == cid
    other = httpx.get(worker.url + "/health", headers={"X-Correlation-ID": "not-a-uuid"})
    assert other.headers["x-correlation-id"] != "not-a-uuid"


def test_embeddings_when_enabled(processes: Processes, tiny_model: Path, rbee_home: Path) -> None:
    worker = start_worker(processes, tiny_model, extra=["--embeddings"])
    client = openai.OpenAI(base_url=worker.url + "/v1", api_key="dev")
    result = client.embeddings.create(
        model="tiny", input=["hello world", "hello world", "something else entirely"]
    )
    a, b, c = (item.embedding for item in result.data)
    assert len(a) == 64 and a == b and a != c
    assert abs(sum(x * x for x in a) - 1.0) < 1e-4  # L2-normalised, as OpenAI's are
    assert result.usage.prompt_tokens > 0
    plain = httpx.post(
        worker.url + "/v1/embeddings",
        json={"model": "tiny", "input": "hello world", "encoding_format": "float"},
    )
    assert plain.json()["data"][0]["embedding"] == pytest.approx(a, abs=1e-6)
    assert "created on first use" not in worker.log()  # made at load, as asked


def test_embeddings_without_the_flag_create_their_context_on_first_use(worker: Service) -> None:
    """Any loaded model serves embeddings; concurrent first requests share one context."""

    def embed(text: str) -> list[float]:
        response = httpx.post(
            worker.url + "/v1/embeddings", json={"model": "tiny", "input": text}, timeout=30
        )
        assert response.status_code == 200, response.text
        vector: list[float] = response.json()["data"][0]["embedding"]
        return vector

    with ThreadPoolExecutor(4) as pool:
        vectors = list(pool.map(embed, ["hello world"] * 4 + ["something else"]))
    assert all(v == vectors[0] for v in vectors[:4]) and vectors[4] != vectors[0]
    assert len(vectors[0]) == 64 and abs(sum(x * x for x in vectors[0]) - 1.0) < 1e-4
    assert worker.log().count("created on first use") == 1
    # A generation still runs beside the embedding context.
    done = httpx.post(
        worker.url + "/v1/completions", json={"model": "t", "prompt": "Hi", "max_tokens": 3}
    )
    assert done.status_code == 200 and done.json()["choices"][0]["text"]
    packed = httpx.post(
        worker.url + "/v1/embeddings",
        json={"model": "tiny", "input": "hello world", "encoding_format": "base64"},
    ).json()["data"][0]["embedding"]
    raw = base64.b64decode(packed)
    assert list(struct.unpack(f"<{len(raw) // 4}f", raw)) == pytest.approx(vectors[0], abs=1e-6)
