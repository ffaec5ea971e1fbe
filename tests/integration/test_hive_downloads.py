"""Downloads through a real hive from a real, misbehaving local HTTP server.

One hive process and one file server serve the whole module; every test uses its own
file name, so catalog ids never collide.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from rbee_hive.provisioner import part_path
from tests.hive.support import FileServer, download, serve_files, sse_events, start_hive
from tests.procs import Processes, Service, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def files(tiny_model: Path) -> Iterator[FileServer]:
    yield from serve_files(tiny_model.read_bytes())


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hive-downloads")


@pytest.fixture(scope="module")
def hive(files: FileServer, home: Path) -> Iterator[Service]:
    processes = Processes(home)
    try:
        yield start_hive(
            processes,
            home / "data",
            env={
                "HF_ENDPOINT": files.url,
                "HF_HUB_DISABLE_TELEMETRY": "1",
                "RBEE_HIVE_DOWNLOAD_STALL_TIMEOUT_S": "0.5",
                "RBEE_HIVE_DOWNLOAD_ATTEMPTS": "3",
                "RBEE_HIVE_DOWNLOAD_BACKOFF_S": "0.05",
            },
        )
    finally:
        processes.cleanup()


def terminal(events: list[dict[str, Any]]) -> dict[str, Any]:
    ends = [e for e in events if e["type"] in ("end", "error")]
    assert len(ends) == 1 and events[-1] is ends[0], events
    return ends[0]


def models_dir(home: Path) -> Path:
    return home / "data" / "models"


def test_interrupted_download_resumes_with_range(
    hive: Service, files: FileServer, home: Path
) -> None:
    end = terminal(download(hive.url, f"{files.url}/drop/resume-a.gguf"))
    assert end["type"] == "end", end
    model = end["model"]
    assert model["sha256"] == files.sha256
    assert (model["architecture"], model["context_length"]) == ("llama", 4096)
    hits = [h for h in files.hits if h.path == "/drop/resume-a.gguf"]
    half = len(files.payload) // 2
    assert [h.range for h in hits] == [None, f"bytes={half}-"]
    assert Path(model["path"]).read_bytes() == files.payload
    assert not list(models_dir(home).glob("*.part"))


def test_part_file_left_by_an_earlier_hive_is_resumed(
    hive: Service, files: FileServer, home: Path
) -> None:
    quarter = len(files.payload) // 4
    url = f"{files.url}/ok/resume-b.gguf"
    part = part_path(models_dir(home) / "resume-b.gguf", url)
    part.write_bytes(files.payload[:quarter])
    end = terminal(download(hive.url, f"{url}#sha256={files.sha256}"))
    assert end["type"] == "end", end
    assert [h.range for h in files.hits if h.path == "/ok/resume-b.gguf"] == [f"bytes={quarter}-"]
    assert Path(end["model"]["path"]).read_bytes() == files.payload


def pull_and_signal(base_url: str, ref: str, first_event: threading.Event) -> list[dict[str, Any]]:
    events = []
    with httpx.stream(
        "POST", base_url + "/v1/models/download", json={"model_ref": ref}, timeout=30
    ) as response:
        for event in sse_events(response):
            first_event.set()
            events.append(event)
    return events


def test_concurrent_pulls_share_one_download(hive: Service, files: FileServer) -> None:
    files.gate.clear()
    ref = f"{files.url}/gate/shared.gguf"
    joined = [threading.Event() for _ in range(3)]
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        pulls = [pool.submit(pull_and_signal, hive.url, ref, e) for e in joined]
        # Every pull is watching (it got a progress event) while the server holds the file.
        wait_until(lambda: all(e.is_set() for e in joined), timeout=10, what="three watchers")
        files.gate.set()
        results = [terminal(p.result(timeout=30)) for p in pulls]
    assert all(r["type"] == "end" for r in results), results
    assert len({r["model"]["path"] for r in results}) == 1
    assert files.count("/gate/shared.gguf") == 1


def test_progress_arrives_during_the_download(hive: Service, files: FileServer) -> None:
    files.gate.clear()
    seen: list[dict[str, Any]] = []
    released_on_progress = False
    with httpx.stream(
        "POST",
        hive.url + "/v1/models/download",
        json={"model_ref": f"{files.url}/gate/progress.gguf"},
        timeout=30,
    ) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        for event in sse_events(resp):
            seen.append(event)
            if event["type"] == "progress" and 0 < event["bytes"] < len(files.payload):
                # The server holds the rest back until this client has seen progress,
                # so the download can only finish if progress came while it ran.
                released_on_progress = True
                files.gate.set()
    assert released_on_progress, seen
    middle = [e for e in seen if e["type"] == "progress" and 0 < e["bytes"] < e["total"]]
    assert middle[0]["total"] == len(files.payload) and middle[0]["bytes_per_s"] > 0
    assert seen[-1]["type"] == "end", seen


@pytest.mark.parametrize(
    ("path", "code", "words"),
    [
        ("/404/missing.gguf", "MODEL_NOT_FOUND", "HTTP 404"),
        ("/403/private.gguf", "DOWNLOAD_FAILED", "HTTP 403"),
        ("/stall/stalled.gguf", "DOWNLOAD_TIMEOUT", "stalled"),
    ],
)
def test_failed_downloads_end_with_an_error_event(
    hive: Service, files: FileServer, home: Path, path: str, code: str, words: str
) -> None:
    end = terminal(download(hive.url, files.url + path))
    assert (end["type"], end["code"]) == ("error", code), end
    assert words in end["message"]
    name = path.rsplit("/", 1)[-1].removesuffix(".gguf")
    assert not (models_dir(home) / f"{name}.gguf").exists()
    listed = httpx.get(hive.url + "/v1/models").json()["data"]
    assert name not in {m["id"] for m in listed}
    if code == "DOWNLOAD_TIMEOUT":
        assert files.count(path) == 3  # every attempt stalled
    else:
        assert files.count(path) == 1  # not retried: another attempt cannot help


def test_wrong_checksum_is_retried_once_then_fails(
    hive: Service, files: FileServer, home: Path
) -> None:
    wrong = "0" * 64
    end = terminal(download(hive.url, f"{files.url}/ok/badsum.gguf#sha256={wrong}"))
    assert (end["type"], end["code"]) == ("error", "CHECKSUM_MISMATCH"), end
    assert files.count("/ok/badsum.gguf") == 2
    assert not list(models_dir(home).glob("badsum*"))


def test_hf_reference_goes_through_hf_endpoint(hive: Service, files: FileServer) -> None:
    files.hf_status = 200
    end = terminal(download(hive.url, "hf:test-org/tiny-GGUF:tiny.Q4_K_M.gguf"))
    assert end["type"] == "end", end
    assert end["model"]["sha256"] == files.sha256
    assert files.count("/test-org/tiny-GGUF/resolve/main/tiny.Q4_K_M.gguf") == 1


@pytest.mark.parametrize("status", [401, 403])
def test_hf_refusal_says_to_set_hf_token(hive: Service, files: FileServer, status: int) -> None:
    files.hf_status = status
    try:
        end = terminal(download(hive.url, f"hf:test-org/gated-{status}-GGUF:gated.gguf"))
    finally:
        files.hf_status = 200
    assert end["type"] == "error", end
    assert "HF_TOKEN" in end["message"], end


def test_file_larger_than_the_free_disk_is_refused_before_writing(
    hive: Service, files: FileServer, home: Path
) -> None:
    before = sorted(p.name for p in models_dir(home).iterdir())
    end = terminal(download(hive.url, f"{files.url}/huge/enormous.gguf"))
    assert (end["type"], end["code"]) == ("error", "INSUFFICIENT_DISK"), end
    assert "disk space" in end["message"] and "GiB required" in end["message"], end
    assert files.count("/huge/enormous.gguf") == 1  # not retried: another try cannot help
    # Nothing written: no model, no .part file, and the catalog is unchanged.
    assert sorted(p.name for p in models_dir(home).iterdir()) == before
    listed = httpx.get(hive.url + "/v1/models").json()["data"]
    assert "enormous" not in {m["id"] for m in listed}


def test_spawn_of_a_model_not_on_disk_downloads_it_first(hive: Service, files: FileServer) -> None:
    ref = f"{files.url}/ok/spawned.gguf"
    response = httpx.post(hive.url + "/v1/workers/spawn", json={"model_ref": ref}, timeout=10)
    assert response.status_code == 202, response.text
    worker = response.json()
    assert worker["state"] == "downloading"
    seen = set()

    def idle() -> bool:
        body = httpx.get(f"{hive.url}/v1/workers/{worker['id']}", timeout=5).json()
        seen.add(body["state"])
        assert body["state"] != "failed", body
        return bool(body["state"] == "idle")

    wait_until(idle, timeout=30, interval=0.02, what="downloaded worker idle")
    assert "loading" in seen
    assert files.count("/ok/spawned.gguf") == 1
    metrics = httpx.get(hive.url + "/metrics").text
    assert 'rbee_workers{state="idle"} 1.0' in metrics
    assert "rbee_downloaded_bytes_total" in metrics
    assert httpx.delete(f"{hive.url}/v1/workers/{worker['id']}", timeout=30).status_code == 204
