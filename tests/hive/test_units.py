"""Pure parts of the hive: settings, preflight, the catalog store, GGUF metadata."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from rbee_hive.catalog import Store, WorkerRecord, catalog_id
from rbee_hive.downloads import check_disk
from rbee_hive.gguf_meta import NotGguf, read_meta
from rbee_hive.provisioner import Download, download_key, part_path
from rbee_hive.resources import check_backend_name, default_backend, preflight
from rbee_hive.settings import HiveSettings, default_hive_id
from shared.catalog import CatalogEntry
from shared.errors import (
    BackendUnavailable,
    InsufficientDisk,
    InsufficientRam,
    InsufficientVram,
    ValidationError,
)
from shared.hives import BackendInfo, Capabilities, CudaDevice
from shared.modelref import parse_model_ref
from shared.settings import ConfigError

GIB = 1024**3

TIMERS = {
    "RBEE_HIVE_HEARTBEAT_INTERVAL_S": "heartbeat_interval_s",
    "RBEE_HIVE_HEALTH_CHECK_INTERVAL_S": "health_check_interval_s",
    "RBEE_HIVE_HEALTH_CHECK_TIMEOUT_S": "health_check_timeout_s",
    "RBEE_HIVE_HEALTH_CHECK_FAILURES": "health_check_failures",
    "RBEE_HIVE_READY_TIMEOUT_S": "ready_timeout_s",
    "RBEE_HIVE_READY_TIMEOUT_PER_GIB_S": "ready_timeout_per_gib_s",
    "RBEE_HIVE_WORKER_IDLE_TIMEOUT_S": "worker_idle_timeout_s",
    "RBEE_HIVE_RESTART_LIMIT": "restart_limit",
    "RBEE_HIVE_DOWNLOAD_STALL_TIMEOUT_S": "download_stall_timeout_s",
    "RBEE_HIVE_DOWNLOAD_ATTEMPTS": "download_attempts",
    "RBEE_HIVE_DOWNLOAD_BACKOFF_S": "download_backoff_s",
    "RBEE_HIVE_DRAIN_TIMEOUT_S": "drain_timeout_s",
}


def test_every_timer_reads_its_spec_environment_name(monkeypatch: pytest.MonkeyPatch) -> None:
    for index, name in enumerate(TIMERS):
        monkeypatch.setenv(name, str(index + 2))
    monkeypatch.setenv("RBEE_HIVE_ID", "gpu-box-7")
    settings = HiveSettings.load()
    for index, field in enumerate(TIMERS.values()):
        assert getattr(settings, field) == index + 2, field
    assert settings.hive_id == "gpu-box-7"
    assert settings.port == 9200 and settings.worker_port_start == 8001


def test_defaults_and_refusals(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = HiveSettings.load()
    assert (defaults.heartbeat_interval_s, defaults.ready_timeout_s) == (5, 60)
    assert (defaults.restart_limit, defaults.download_attempts) == (3, 5)
    assert defaults.worker_command.endswith("llm-worker-rbee")
    hive_id = default_hive_id()
    assert hive_id and all(
        (c.isalnum() and c.islower()) or c.isdigit() or c == "-" for c in hive_id
    )
    with pytest.raises(ConfigError, match="hive_id"):
        HiveSettings.load(hive_id="Not_DNS_Safe")
    with pytest.raises(ConfigError, match="queen_url"):
        HiveSettings.load(queen_url="ftp://queen")
    monkeypatch.setenv("RBEE_HIVE_HEALTH_CHECK_INTERVAL_S", "-1")
    with pytest.raises(ConfigError, match="health_check_interval_s"):
        HiveSettings.load()


def caps(ram_free: int = 8 * GIB, cuda: list[CudaDevice] | None = None) -> Capabilities:
    backends = [BackendInfo(name="cpu", devices=[0])]
    if cuda:
        backends.append(BackendInfo(name="cuda", devices=cuda))
    return Capabilities(
        id="h1",
        version="0",
        backends=backends,
        ram_total_bytes=16 * GIB,
        ram_free_bytes=ram_free,
        disk_free_bytes=GIB,
    )


def test_preflight_needs_ram_of_1_2_times_the_file_on_cpu() -> None:
    preflight(caps(ram_free=12 * GIB), "cpu", 0, 10 * GIB)
    with pytest.raises(InsufficientRam) as refused:
        preflight(caps(ram_free=11 * GIB), "cpu", 0, 10 * GIB)
    assert refused.value.details == {"required_bytes": 12 * GIB, "available_bytes": 11 * GIB}
    assert refused.value.status == 503
    assert "12.00 GiB required, 11.00 GiB available" in refused.value.message


def test_preflight_checks_vram_of_the_chosen_cuda_device() -> None:
    gpus = [
        CudaDevice(index=0, name="A", vram_total_bytes=8 * GIB, vram_free_bytes=2 * GIB),
        CudaDevice(index=1, name="B", vram_total_bytes=24 * GIB, vram_free_bytes=20 * GIB),
    ]
    preflight(caps(cuda=gpus), "cuda", 1, 10 * GIB)
    with pytest.raises(InsufficientVram) as refused:
        preflight(caps(cuda=gpus), "cuda", 0, 10 * GIB)
    assert refused.value.details["available_bytes"] == 2 * GIB
    assert default_backend(caps(cuda=gpus)) == ("cuda", 0)
    assert default_backend(caps()) == ("cpu", 0)


def test_preflight_refuses_backends_and_devices_the_hive_lacks() -> None:
    with pytest.raises(BackendUnavailable, match="'cuda' is not available"):
        preflight(caps(), "cuda", 0, None)
    with pytest.raises(BackendUnavailable, match="no device 1"):
        preflight(caps(), "cpu", 1, None)
    with pytest.raises(ValidationError, match="Unknown backend 'rocm'"):
        check_backend_name("rocm")


def test_disk_check_wants_ten_percent_margin(tmp_path: Path) -> None:
    check_disk(tmp_path, 1024)
    with pytest.raises(InsufficientDisk) as refused:
        check_disk(tmp_path, 10**18)
    assert refused.value.details["required_bytes"] == int(10**18 * 1.1)


def test_gguf_metadata_of_the_tiny_model(tiny_model: Path, tmp_path: Path) -> None:
    meta = read_meta(tiny_model)
    assert (meta.architecture, meta.context_length) == ("llama", 4096)
    assert meta.size == tiny_model.stat().st_size and meta.parameter_count
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a model at all")
    with pytest.raises(NotGguf):
        read_meta(junk)


async def test_store_keeps_models_and_workers_and_prunes_missing_files(
    tmp_path: Path, tiny_model: Path
) -> None:
    copy = tmp_path / "m.gguf"
    copy.write_bytes(b"GGUF")
    store = await Store.open(tmp_path / "hive.db")
    try:
        for model_id, path in (("kept", tiny_model), ("gone", copy)):
            await store.put_model(
                CatalogEntry(
                    id=model_id, model_ref=f"file:{path}", state="ready", path=str(path), size=4
                )
            )
        record = WorkerRecord(
            "w-1", "file:/x.gguf", "cpu", 0, 123, 8001, "http://127.0.0.1:8001", None, None, 0
        )
        await store.put_worker(record)
        copy.unlink()
        assert await store.prune_missing() == ["gone"]
        assert [m.id for m in await store.models()] == ["kept"]
        assert (await store.find_model(f"file:{tiny_model}")) is not None
        assert await store.workers() == [record]
        await store.delete_worker("w-1")
        assert await store.workers() == []
    finally:
        await store.close()
    assert (tmp_path / "hive.db-wal").exists() or (tmp_path / "hive.db").exists()


def test_catalog_ids_are_slugs_and_stay_unique() -> None:
    ref = parse_model_ref("https://example.com/a/Llama-3.2-1B.Q4_K_M.gguf")
    assert catalog_id(ref, taken_by_other=False) == "llama-3.2-1b.q4_k_m"
    other = catalog_id(ref, taken_by_other=True)
    assert other.startswith("llama-3.2-1b.q4_k_m-") and len(other) == len("llama-3.2-1b.q4_k_m") + 9


def test_one_source_is_one_download_whatever_checksum_it_names(tmp_path: Path) -> None:
    plain = parse_model_ref("https://example.com/m/model.gguf")
    pinned = parse_model_ref("https://example.com/m/model.gguf#sha256=" + "a" * 64)
    other = parse_model_ref("https://mirror.example.org/model.gguf")
    assert download_key(plain) == download_key(pinned) != download_key(other)
    final = tmp_path / "model.gguf"
    assert part_path(final, download_key(plain)) == part_path(final, download_key(pinned))
    assert part_path(final, download_key(plain)) != part_path(final, download_key(other))
    assert part_path(final, "k").name.endswith(".gguf.part")


async def test_download_watchers_get_throttled_progress_keepalives_and_one_end() -> None:
    download = Download("key")
    early, late = download.events(keepalive_s=0.05), download.events(keepalive_s=0.05)
    first = asyncio.ensure_future(anext(early))
    await asyncio.sleep(0)  # let the first watcher subscribe
    for done in range(0, 1000, 10):  # a burst: at most one event per 0.25 s goes out
        download.progress(done, 1000)
    assert (await first)["bytes"] == 0
    assert await anext(early) is None  # nothing for a while: a keepalive
    assert (await anext(late))["bytes"] == 0  # a late watcher starts from the latest
    entry = CatalogEntry(id="m", model_ref="file:/m.gguf", state="ready")
    download.finish(entry, None)
    assert (await anext(early))["type"] == "end"
    assert (await anext(late))["type"] == "end"
    after = [e async for e in download.events()]
    assert [e["type"] for e in after if e] == ["end"]
