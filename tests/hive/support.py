"""Test support for the hive: a misbehaving model file server, and hive process helpers.

`FileServer` is a real HTTP server on a thread. It serves one payload under paths that
pick a behaviour: `/ok/...` (Range honoured), `/drop/...` (the first request is cut off
half-way), `/404/...`, `/403/...`, `/stall/...` (sends some bytes, then nothing),
`/gate/...` (sends some bytes, then waits for `gate` to be set), `/huge/...` (announces
a petabyte file, sends 4 KiB of it, then nothing), and
`/<org>/<repo>/resolve/<rev>/<file>` like the Hugging Face Hub. It records every request.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import psutil

from shared.sse import SSEParser
from tests.procs import Processes, Service, free_port, wait_until

HUGE_BYTES = 10**15  # 1 PB: more than any test machine's free disk


@dataclass
class Hit:
    method: str
    path: str
    range: str | None


@dataclass
class FileServer:
    payload: bytes
    hits: list[Hit] = field(default_factory=list)
    gate: threading.Event = field(default_factory=threading.Event)
    closing: threading.Event = field(default_factory=threading.Event)
    dropped: set[str] = field(default_factory=set)
    hf_status: int = 200
    url: str = ""

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.payload).hexdigest()

    def count(self, path_part: str, method: str = "GET") -> int:
        return sum(1 for h in self.hits if path_part in h.path and h.method == method)


def _handler(server: FileServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_HEAD(self) -> None:
            self._serve(head=True)

        def do_GET(self) -> None:
            self._serve(head=False)

        def _serve(self, head: bool) -> None:
            server.hits.append(Hit(self.command, self.path, self.headers.get("Range")))
            kind = self.path.split("/")[1]
            if kind in ("404", "403"):
                self._status(int(kind))
            elif "/resolve/" in self.path:
                self._hub(head)
            elif kind == "drop" and self.path not in server.dropped:
                server.dropped.add(self.path)
                self._body(head, cut_at=len(server.payload) // 2)
            elif kind == "stall":
                self._body(head, pause_at=len(server.payload) // 4, pause=server.closing)
            elif kind == "gate":
                self._body(head, pause_at=len(server.payload) // 4, pause=server.gate)
            elif kind == "huge":
                self._huge(head)
            else:
                self._body(head)

        def _status(self, status: int, extra: Mapping[str, str] | None = None) -> None:
            self.send_response(status)
            for key, value in (extra or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def _huge(self, head: bool) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(HUGE_BYTES))
            self.end_headers()
            self.close_connection = True
            if head:
                return
            try:  # a little of it, then nothing: a client that writes on stalls, not fills
                self.wfile.write(server.payload[:4096])
                self.wfile.flush()
            except OSError:
                return
            server.closing.wait(timeout=30)

        def _hub(self, head: bool) -> None:
            if server.hf_status != 200:
                self._status(server.hf_status)
                return
            self._body(head, extra={"ETag": f'"{server.sha256}"', "X-Repo-Commit": "0" * 40})

        def _body(
            self,
            head: bool,
            *,
            cut_at: int | None = None,
            pause_at: int | None = None,
            pause: threading.Event | None = None,
            extra: Mapping[str, str] | None = None,
        ) -> None:
            data = server.payload
            start = 0
            requested = self.headers.get("Range")
            if requested and requested.startswith("bytes=") and requested.endswith("-"):
                start = int(requested[6:-1])
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            for key, value in (extra or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            if head:
                return
            body = data[start:]
            try:
                if cut_at is not None:
                    self.wfile.write(body[:cut_at])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                if pause_at is not None and pause is not None:
                    self.wfile.write(body[:pause_at])
                    self.wfile.flush()
                    pause.wait(timeout=30)
                    if server.closing.is_set():
                        self.close_connection = True
                        return
                    body = body[pause_at:]
                self.wfile.write(body)
            except OSError:
                self.close_connection = True

    return Handler


def serve_files(payload: bytes) -> Iterator[FileServer]:
    """Run a FileServer on a free port for the duration of the generator."""
    state = FileServer(payload)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    httpd.daemon_threads = True
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state.closing.set()
        state.gate.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


# hive processes


def start_hive(
    processes: Processes,
    home: Path,
    *,
    env: Mapping[str, str] | None = None,
    port: int | None = None,
    args: list[str] | None = None,
    worker_port_start: int | None = None,
) -> Service:
    port = port or free_port()
    full_env = {
        "RBEE_HIVE_HEALTH_CHECK_INTERVAL_S": "0.5",
        "RBEE_HIVE_HEALTH_CHECK_TIMEOUT_S": "2",
        "RBEE_HIVE_DRAIN_TIMEOUT_S": "5",
        "RBEE_HIVE_WORKER_IDLE_TIMEOUT_S": "0",
        "RBEE_WORKER_DRAIN_TIMEOUT_S": "3",
        "RBEE_HIVE_WORKER_PORT_START": str(worker_port_start or free_port()),
        **(env or {}),
    }
    hive = processes.start(
        "rbee-hive",
        ["--port", str(port), "--data-dir", str(home), *(args or [])],
        env=full_env,
        url=f"http://127.0.0.1:{port}",
        name="rbee-hive",
    )
    hive.wait_healthy(timeout=30)
    return hive


def worker_pids(worker_id: str) -> list[int]:
    """Live processes whose command line names this worker id."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        cmdline = proc.info.get("cmdline") or []
        if worker_id in cmdline and proc.info.get("status") != psutil.STATUS_ZOMBIE:
            found.append(int(proc.info["pid"]))
    return found


def sse_events(response: httpx.Response) -> Iterator[dict[str, Any]]:
    """Parsed `data:` events of a streaming response, up to `[DONE]`."""
    import json

    parser = SSEParser()
    for chunk in response.iter_text():
        for event in parser.feed(chunk):
            if event.data is None:
                continue
            if event.is_done:
                return
            yield json.loads(event.data)


def download(
    base_url: str, model_ref: str, headers: Mapping[str, str] | None = None, timeout: float = 60
) -> list[dict[str, Any]]:
    with httpx.stream(
        "POST",
        base_url + "/v1/models/download",
        json={"model_ref": model_ref},
        headers=dict(headers or {}),
        timeout=timeout,
    ) as response:
        assert response.status_code == 200, response.read()
        return list(sse_events(response))


def wait_worker(
    base_url: str,
    worker_id: str,
    predicate: Any,
    *,
    timeout: float = 30,
    headers: Mapping[str, str] | None = None,
    what: str = "worker state",
) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        response = httpx.get(
            f"{base_url}/v1/workers/{worker_id}", headers=dict(headers or {}), timeout=5
        )
        body: dict[str, Any] = response.json()
        return body if predicate(response.status_code, body) else None

    result = wait_until(check, timeout=timeout, interval=0.05, what=what)
    assert isinstance(result, dict)
    return result


def write_secret(path: Path, text: str) -> Path:
    path.write_text(text + "\n")
    os.chmod(path, 0o600)
    return path


def elapsed_since(start: float) -> float:
    return time.monotonic() - start
