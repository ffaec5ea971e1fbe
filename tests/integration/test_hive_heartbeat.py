"""Heartbeats from a real hive to a small real HTTP server standing in for the queen."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from rbee_hive.sources import bundled_available
from shared.auth import Audience, Role, mint_token
from shared.hives import Heartbeat, HiveRegistration
from shared.workers import WorkerInfo
from tests.hive.support import download, start_hive, write_secret
from tests.procs import Processes, Service, free_port, wait_until

pytestmark = pytest.mark.integration

SECRET = "heartbeat-cluster-secret-0123456789abcdef"


@dataclass
class FakeQueen:
    calls: list[tuple[str, str, dict[str, Any], dict[str, Any]]] = field(default_factory=list)
    forget_next: bool = False  # answer the next heartbeat 404, as a queen that lost us
    client_ports: list[int] = field(default_factory=list)  # one entry a request

    def of(self, method: str) -> list[dict[str, Any]]:
        return [body for m, _, body, _ in self.calls if m == method]


def _handler(queen: FakeQueen) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _record(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            token = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
            claims = jwt.decode(token, SECRET, algorithms=["HS256"], audience="rbee-queen")
            queen.calls.append((self.command, self.path, body, claims))
            queen.client_ports.append(self.client_address[1])
            status = 200
            if self.command == "POST" and queen.forget_next:
                queen.forget_next, status = False, 404
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        do_PUT = _record
        do_POST = _record

    return Handler


def run_queen(port: int, queen: FakeQueen) -> Iterator[None]:
    httpd = ThreadingHTTPServer(("127.0.0.1", port), _handler(queen))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def beating_hive(
    processes: Processes,
    home: Path,
    tmp_path: Path,
    queen_port: int,
    hive_id: str,
    interval_s: float = 0.3,
) -> tuple[Service, dict[str, str]]:
    """A hive with the cluster secret that beats to a queen on `queen_port` every
    `interval_s`, and an operator's headers for it."""
    secret = write_secret(tmp_path / "jwt.secret", SECRET)
    hive = start_hive(
        processes,
        home,
        env={
            "RBEE_HIVE_JWT_SECRET_FILE": str(secret),
            "RBEE_HIVE_QUEEN_URL": f"http://127.0.0.1:{queen_port}",
            "RBEE_HIVE_HEARTBEAT_INTERVAL_S": str(interval_s),
            "RBEE_HIVE_ID": hive_id,
        },
    )
    token = mint_token(SECRET, role=Role.OPERATOR, audience=Audience.HIVE, ttl_s=300)
    return hive, {"Authorization": f"Bearer {token}"}


def test_hive_registers_and_heartbeats_once_the_queen_appears(
    processes: Processes, rbee_home: Path, tiny_model: Path, tmp_path: Path
) -> None:
    queen_port = free_port()
    hive, operator = beating_hive(processes, rbee_home, tmp_path, queen_port, "hb-hive")
    # No queen yet: the hive serves as usual.
    assert download(hive.url, f"file:{tiny_model}", headers=operator)[-1]["type"] == "end"
    assert httpx.get(hive.url + "/v1/workers", headers=operator).status_code == 200

    queen = FakeQueen()
    runner = run_queen(queen_port, queen)
    next(runner)
    try:
        wait_until(lambda: len(queen.of("POST")) >= 2, timeout=15, what="two heartbeats")
        queen.forget_next = True
        wait_until(lambda: len(queen.of("PUT")) >= 2, timeout=15, what="re-registration")
    finally:
        runner.close()

    method, path, body, claims = queen.calls[0]
    assert (method, path) == ("PUT", "/v2/hives/hb-hive")
    assert (claims["role"], claims["aud"]) == ("hive", "rbee-queen")
    registration = HiveRegistration.model_validate(body)
    assert registration.url == hive.url
    assert registration.capabilities is not None and registration.capabilities.id == "hb-hive"
    beats = [c for c in queen.calls if c[0] == "POST"]
    assert all(path == "/v2/hives/hb-hive/heartbeat" for _, path, _, _ in beats)
    beat = Heartbeat.model_validate(beats[0][2])
    assert beat.workers == [] and beat.capabilities is not None
    assert f"file:{tiny_model}" in beat.models
    if bundled_available():  # the quick-start model is listed before its first use
        assert "gemma3-270m" in beat.models


def test_heartbeats_further_apart_than_httpx_idle_expiry_share_one_connection(
    processes: Processes, rbee_home: Path, tmp_path: Path
) -> None:
    """httpx closes connections idle for 5 s, the default interval: each beat would open
    a new TCP connection at both ends. Beats 5.5 s apart keep the first one."""
    queen = FakeQueen()
    queen_port = free_port()
    runner = run_queen(queen_port, queen)
    next(runner)
    try:
        beating_hive(processes, rbee_home, tmp_path, queen_port, "hb-conn", interval_s=5.5)
        wait_until(lambda: len(queen.of("POST")) >= 2, timeout=20, what="two heartbeats")
    finally:
        runner.close()
    assert [m for m, *_ in queen.calls[:3]] == ["PUT", "POST", "POST"]
    assert len(set(queen.client_ports[:3])) == 1, queen.client_ports


def test_heartbeat_snapshot_carries_the_hives_live_workers(
    processes: Processes, rbee_home: Path, tiny_model: Path, tmp_path: Path
) -> None:
    queen = FakeQueen()
    queen_port = free_port()
    runner = run_queen(queen_port, queen)
    next(runner)
    try:
        hive, operator = beating_hive(processes, rbee_home, tmp_path, queen_port, "hb-workers")
        assert download(hive.url, f"file:{tiny_model}", headers=operator)[-1]["type"] == "end"
        spawned = httpx.post(
            hive.url + "/v1/workers/spawn",
            headers=operator,
            json={"model_ref": f"file:{tiny_model}"},
            timeout=10,
        )
        assert spawned.status_code == 202, spawned.text
        worker_id = spawned.json()["id"]

        def latest_workers() -> list[WorkerInfo]:
            return Heartbeat.model_validate(queen.of("POST")[-1]).workers

        def beat_with_idle_worker() -> WorkerInfo | None:
            workers = latest_workers() if queen.of("POST") else []
            return next((w for w in workers if w.id == worker_id and w.state == "idle"), None)

        seen = wait_until(beat_with_idle_worker, timeout=30, what="idle worker in a heartbeat")
        assert isinstance(seen, WorkerInfo)
        listed = httpx.get(f"{hive.url}/v1/workers/{worker_id}", headers=operator).json()
        assert (seen.url, seen.pid, seen.port) == (listed["url"], listed["pid"], listed["port"])
        assert seen.model == f"file:{tiny_model}" and seen.slots.total == 1
        assert seen.url is not None and httpx.get(seen.url + "/health").status_code == 200

        stopped = httpx.delete(f"{hive.url}/v1/workers/{worker_id}", headers=operator, timeout=30)
        assert stopped.status_code == 204
        beats_before = len(queen.of("POST"))
        wait_until(
            lambda: len(queen.of("POST")) > beats_before and latest_workers() == [],
            timeout=10,
            what="a heartbeat without the stopped worker",
        )
    finally:
        runner.close()
