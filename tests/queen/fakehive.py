"""A stand-in hive on a real socket, for in-process queen tests of the control plane.

It answers the hive endpoints the queen's management routes call (`/health`,
`GET /v1/models`, `DELETE /v1/models/{id}`, `POST /v1/shutdown`) with the hive's shapes
and envelopes, and records every request, so a test can see what the queen forwarded.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def envelope(code: str, message: str) -> dict[str, Any]:
    return {
        "error": {
            "code": code,
            "message": message,
            "type": "invalid_request_error",
            "param": None,
            "correlation_id": None,
            "details": {},
        }
    }


@dataclass
class FakeHive:
    models: set[str] = field(default_factory=set)
    in_use: set[str] = field(default_factory=set)
    stopped: bool = False
    requests: list[tuple[str, str]] = field(default_factory=list)
    url: str = ""

    def entries(self) -> list[dict[str, Any]]:
        return [
            {"id": m, "model_ref": f"file:/models/{m}.gguf", "state": "ready"}
            for m in sorted(self.models)
        ]

    def answer(self, method: str, path: str) -> tuple[int, Any]:
        self.requests.append((method, path))
        if (method, path) == ("GET", "/health"):
            return (503, {"status": "stopping"}) if self.stopped else (200, {"status": "ok"})
        if (method, path) == ("GET", "/v1/models"):
            return 200, {"data": self.entries()}
        if (method, path) == ("POST", "/v1/shutdown"):
            self.stopped = True
            return 202, {"status": "shutting_down"}
        if method == "DELETE" and path.startswith("/v1/models/"):
            return self._delete(path.removeprefix("/v1/models/"))
        return 404, envelope("NOT_FOUND", "No such endpoint on this fake hive.")

    def _delete(self, model_id: str) -> tuple[int, Any]:
        if model_id in self.in_use:
            return 409, envelope("MODEL_IN_USE", f"Model '{model_id}' is used by a worker.")
        if model_id not in self.models:
            return 404, envelope("MODEL_NOT_FOUND", f"No model '{model_id}' on this disk.")
        self.models.discard(model_id)
        return 204, None


def _handler(hive: FakeHive) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            status, body = hive.answer(self.command, self.path)
            raw = b"" if body is None else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        do_GET = do_POST = do_DELETE = _serve

    return Handler


@contextmanager
def fake_hive(models: set[str] | None = None) -> Iterator[FakeHive]:
    hive = FakeHive(models=set(models or ()))
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(hive))
    server.daemon_threads = True
    hive.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hive
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
