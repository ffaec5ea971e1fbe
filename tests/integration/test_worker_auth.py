"""Authentication at a real worker: tokens, roles, dev mode and refused starts."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import jwt
import pytest

from shared.auth import Audience, Role, mint_token
from tests.integration.workers import start_worker
from tests.procs import Processes, Service, wait_until

pytestmark = pytest.mark.integration

SECRET = "cluster-secret-for-tests-0123456789abcdef"
API_KEY = "rbee-worker-test-key-0123456789"


def write_secret(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text + "\n")
    os.chmod(path, mode)
    return path


@pytest.fixture
def secured(processes: Processes, tiny_model: Path, tmp_path: Path, rbee_home: Path) -> Service:
    secret = write_secret(tmp_path / "jwt.secret", SECRET)
    keys = write_secret(tmp_path / "api.keys", API_KEY)
    worker = start_worker(
        processes,
        tiny_model,
        ready=False,
        extra=["--jwt-secret-file", str(secret), "--api-key-file", str(keys)],
    )
    worker.wait_healthy(path="/v1/ready", token=API_KEY)
    return worker


def call(worker: Service, token: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return httpx.post(
        worker.url + "/v1/inference", headers=headers, json={"prompt": "hi", "max_tokens": 2}
    )


def code(response: httpx.Response) -> tuple[int, str]:
    return response.status_code, response.json()["error"]["code"]


def test_rejected_tokens_get_the_right_401(secured: Service) -> None:
    now = int(time.time())
    claims = {"sub": "t", "role": "operator", "aud": "rbee-worker"}
    expired = jwt.encode({**claims, "exp": now - 3600}, SECRET, algorithm="HS256")
    alg_none = jwt.encode({**claims, "exp": now + 600}, None, algorithm="none")
    wrong_aud = mint_token(SECRET, role=Role.OPERATOR, audience=Audience.QUEEN, ttl_s=600)
    assert code(call(secured, None)) == (401, "MISSING_API_KEY")
    basic = httpx.post(
        secured.url + "/v1/inference",
        headers={"Authorization": "Basic abc"},
        json={"prompt": "hi", "max_tokens": 2},
    )
    assert code(basic) == (401, "MISSING_API_KEY")
    assert code(call(secured, "wrong-key-but-long-enough")) == (401, "INVALID_API_KEY")
    for token, why in [(expired, "expired"), (alg_none, "'none'"), (wrong_aud, "audience")]:
        response = call(secured, token)
        assert code(response) == (401, "INVALID_API_KEY")
        assert why in response.json()["error"]["message"]
        assert token not in response.text


def test_valid_credentials_and_roles(secured: Service) -> None:
    assert call(secured, API_KEY).status_code == 200
    operator = mint_token(SECRET, role=Role.OPERATOR, audience=Audience.WORKER, ttl_s=60)
    assert call(secured, operator).status_code == 200
    client = mint_token(SECRET, role=Role.CLIENT, audience=Audience.WORKER, ttl_s=60)
    assert code(call(secured, client)) == (403, "FORBIDDEN")
    hive = mint_token(SECRET, role=Role.HIVE, audience=Audience.WORKER, ttl_s=60)
    ready = httpx.get(secured.url + "/v1/ready", headers={"Authorization": f"Bearer {hive}"})
    assert ready.status_code == 200
    assert httpx.get(secured.url + "/health").status_code == 200  # always public
    assert httpx.get(secured.url + "/metrics").status_code == 200  # public by default


def test_dev_mode_on_loopback_needs_no_token(
    processes: Processes, tiny_model: Path, rbee_home: Path
) -> None:
    worker = start_worker(processes, tiny_model)
    assert call(worker, None).status_code == 200
    assert "dev mode: auth not required on loopback" in worker.log()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--host", "0.0.0.0"], "API token required for non-loopback bind"),
        (["--api-key", "short"], "shorter than 16 characters"),
        (["--port", "80"], "invalid setting port"),
        (["--backend", "quantum"], "invalid setting backend"),
    ],
)
def test_refused_starts_exit_1_with_one_line(
    processes: Processes, tiny_model: Path, rbee_home: Path, extra: list[str], message: str
) -> None:
    worker = start_worker(processes, tiny_model, extra=extra, healthy=False, ready=False)
    assert worker.wait_exit(timeout=20) == 1
    log = worker.log().strip()
    assert message in log
    assert "Traceback" not in log and len(log.splitlines()) == 1


def test_world_readable_secret_file_is_refused(
    processes: Processes, tiny_model: Path, tmp_path: Path, rbee_home: Path
) -> None:
    secret = write_secret(tmp_path / "open.secret", SECRET, mode=0o644)
    worker = start_worker(
        processes, tiny_model, extra=["--jwt-secret-file", str(secret)], healthy=False, ready=False
    )
    assert worker.wait_exit(timeout=20) == 1
    assert "mode 0644" in worker.log()


def test_sighup_reloads_api_keys(
    processes: Processes, tiny_model: Path, tmp_path: Path, rbee_home: Path
) -> None:
    keys = write_secret(tmp_path / "api.keys", API_KEY)
    worker = start_worker(processes, tiny_model, ready=False, extra=["--api-key-file", str(keys)])
    worker.wait_healthy(path="/v1/ready", token=API_KEY)
    rotated = "rbee-rotated-key-9876543210"
    write_secret(keys, rotated)
    worker.signal(signal.SIGHUP)
    wait_until(
        lambda: call(worker, rotated).status_code == 200,
        timeout=5,
        what="the rotated key to be accepted",
    )
    assert code(call(worker, API_KEY)) == (401, "INVALID_API_KEY")
