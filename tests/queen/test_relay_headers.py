"""What the queen sends a worker: correlation id, job id, deadline, the body untouched.

The worker here is a recording stand-in (a plain HTTP server in a thread), so the test
can see the exact request the queen made; the queen runs in process.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.queen.conftest import assert_envelope, heartbeat, running_queen

ANSWER = {
    "id": "cmpl-1",
    "object": "text_completion",
    "created": 0,
    "model": "tiny",
    "choices": [{"index": 0, "text": "ok", "logprobs": None, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
}


class Recorder(ThreadingHTTPServer):
    requests: list[tuple[dict[str, str], bytes]]
    status: int = 200


class Handler(BaseHTTPRequestHandler):
    server: Recorder

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
        status = self.server.status
        payload = json.dumps(ANSWER if status == 200 else {"error": {"code": "BOOM"}}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    server = Recorder(("127.0.0.1", 0), Handler)
    server.requests = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def worker(wid: str, url: str) -> dict[str, Any]:
    return {
        "id": wid,
        "state": "idle",
        "url": url,
        "model": "tiny",
        "slots": {"total": 1, "busy": 0},
    }


async def test_the_worker_gets_the_ids_the_deadline_and_the_same_bytes(
    tmp_path: Path, recorder: Recorder
) -> None:
    url = f"http://127.0.0.1:{recorder.server_address[1]}"
    async with running_queen(tmp_path) as queen:
        await queen.post("/v2/hives/h1/heartbeat", json=heartbeat(workers=[worker("w1", url)]))
        raw = b'{"model": "tiny",   "prompt": "keep  my spacing", "max_tokens": 3}'
        cid = "7e6f0a3c-2b1d-4c5e-8f9a-0b1c2d3e4f5a"
        deadline = "2099-01-01T00:00:00+00:00"
        response = await queen.post(
            "/v1/completions",
            content=raw,
            headers={
                "Content-Type": "application/json",
                "X-Correlation-ID": cid,
                "X-Request-Deadline": deadline,
            },
        )
    assert response.status_code == 200 and response.json() == ANSWER
    headers, body = recorder.requests[0]
    assert body == raw
    assert headers["x-correlation-id"] == cid
    assert headers["x-request-deadline"] == deadline
    assert headers["x-rbee-job-id"] == response.headers["x-rbee-job-id"]
    assert float(response.headers["x-rbee-overhead-ms"]) >= 0


async def test_a_failing_worker_is_replaced_by_another_before_the_first_byte(
    tmp_path: Path, recorder: Recorder
) -> None:
    good = f"http://127.0.0.1:{recorder.server_address[1]}"
    dead = "http://127.0.0.1:9"  # nothing listens there
    async with running_queen(tmp_path) as queen:
        beat = heartbeat(workers=[worker("a-dead", dead), worker("b-good", good)])
        await queen.post("/v2/hives/h1/heartbeat", json=beat)
        for _ in range(3):
            response = await queen.post("/v1/completions", json={"model": "tiny", "prompt": "x"})
            assert response.status_code == 200, response.text
        recorder.status = 500
        failed = await queen.post("/v1/completions", json={"model": "tiny", "prompt": "x"})
    # Both workers failed, so the queen asked their hive for a new one, which is not
    # there either: a 502 that names the hive, never a 500.
    assert_envelope(failed, 502, "HIVE_UNREACHABLE")
    assert len(recorder.requests) == 4
