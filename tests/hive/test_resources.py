"""The CUDA side of `GET /v1/capabilities` on a machine without a GPU.

A fake `pynvml` module (in `sys.modules`, where the hive imports it from) stands in for the
NVIDIA driver this machine lacks, and a fake llama.cpp offload probe for a CUDA build of
llama-cpp-python. The rest is real: the hive app, its lifespan and its resource probe.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager

import rbee_hive.resources as resources
from rbee_hive.app import create_app
from rbee_hive.settings import HiveSettings

GIB = 1024**3


class FakeNVMLError(Exception):
    pass


@dataclass
class Memory:
    total: int
    free: int
    used: int = 0


@dataclass
class FakeNvml:
    """What NVML reports: (name, total, free) per device; `fail_*` raise NVMLError."""

    devices: list[tuple[str | bytes, int, int]]
    fail_init: bool = False
    fail_query: bool = False
    calls: list[str] = field(default_factory=list)

    def module(self) -> types.ModuleType:
        module = types.ModuleType("pynvml")
        fns: dict[str, Callable[..., Any]] = {
            "nvmlInit": self.init,
            "nvmlShutdown": lambda: self.calls.append("shutdown"),
            "nvmlDeviceGetCount": lambda: len(self.devices),
            "nvmlDeviceGetHandleByIndex": self.handle,
            "nvmlDeviceGetName": lambda index: self.devices[index][0],
            "nvmlDeviceGetMemoryInfo": lambda i: Memory(self.devices[i][1], self.devices[i][2]),
        }
        for name, fn in fns.items():
            setattr(module, name, fn)
        module.NVMLError = FakeNVMLError  # type: ignore[attr-defined]
        return module

    def init(self) -> None:
        self.calls.append("init")
        if self.fail_init:
            raise FakeNVMLError("NVML Shared Library Not Found")

    def handle(self, index: int) -> int:
        if self.fail_query:
            raise FakeNVMLError("GPU is lost")
        return index


H200 = ("NVIDIA H200", 141 * GIB, 140 * GIB)
A4000 = (b"NVIDIA RTX A4000", 16 * GIB, 3 * GIB)  # older nvidia-ml-py versions give bytes


@dataclass
class Offload:
    """The fake llama.cpp build: `supported` is its answer; `asked` whether the hive asked."""

    supported: bool = True
    asked: bool = False

    async def probe(self) -> bool:
        self.asked = True
        return self.supported


@pytest.fixture
def offload(monkeypatch: pytest.MonkeyPatch) -> Offload:
    fake = Offload()
    monkeypatch.setattr(resources, "llama_gpu_offload", fake.probe)
    return fake


def use_nvml(monkeypatch: pytest.MonkeyPatch, nvml: FakeNvml | None) -> None:
    if nvml is None:
        monkeypatch.setitem(sys.modules, "pynvml", None)  # `import pynvml` -> ImportError
    else:
        monkeypatch.setitem(sys.modules, "pynvml", nvml.module())


async def capabilities(tmp_path: Path) -> dict[str, Any]:
    settings = HiveSettings.load(data_dir=tmp_path / "data", hive_id="gpu-hive")
    app = create_app(settings)
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://hive") as client:
            response = await client.get("/v1/capabilities")
            assert response.status_code == 200, response.text
            body: dict[str, Any] = response.json()
            return body


def backends(body: dict[str, Any]) -> dict[str, Any]:
    return {b["name"]: b["devices"] for b in body["backends"]}


async def test_cuda_devices_are_reported_with_names_and_vram(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, offload: Offload
) -> None:
    nvml = FakeNvml([H200, A4000])
    use_nvml(monkeypatch, nvml)
    body = await capabilities(tmp_path)
    assert backends(body) == {
        "cpu": [0],
        "cuda": [
            {
                "index": 0,
                "name": "NVIDIA H200",
                "vram_total_bytes": 141 * GIB,
                "vram_free_bytes": 140 * GIB,
            },
            {
                "index": 1,
                "name": "NVIDIA RTX A4000",
                "vram_total_bytes": 16 * GIB,
                "vram_free_bytes": 3 * GIB,
            },
        ],
    }
    assert nvml.calls.count("init") == nvml.calls.count("shutdown") >= 1


async def test_free_vram_is_read_fresh_on_every_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, offload: Offload
) -> None:
    nvml = FakeNvml([H200])
    use_nvml(monkeypatch, nvml)
    settings = HiveSettings.load(data_dir=tmp_path / "data", hive_id="gpu-hive")
    async with LifespanManager(create_app(settings)) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://hive") as client:
            first = (await client.get("/v1/capabilities")).json()
            nvml.devices[0] = ("NVIDIA H200", 141 * GIB, 20 * GIB)  # a model was loaded
            second = (await client.get("/v1/capabilities")).json()
    assert backends(first)["cuda"][0]["vram_free_bytes"] == 140 * GIB
    assert backends(second)["cuda"][0]["vram_free_bytes"] == 20 * GIB


async def test_gpus_without_a_cuda_build_of_llama_cpp_are_not_offered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, offload: Offload
) -> None:
    offload.supported = False
    use_nvml(monkeypatch, FakeNvml([H200]))
    body = await capabilities(tmp_path)
    assert backends(body) == {"cpu": [0]}
    assert offload.asked  # it did ask llama.cpp


@pytest.mark.parametrize(
    "nvml",
    [
        None,  # nvidia-ml-py not installed
        FakeNvml([H200], fail_init=True),  # no driver
        FakeNvml([]),  # driver, but no device
        FakeNvml([H200], fail_query=True),  # the query fails half-way
    ],
    ids=["no-pynvml", "init-fails", "no-devices", "query-fails"],
)
async def test_without_usable_nvml_the_hive_offers_cpu_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, offload: Offload, nvml: FakeNvml | None
) -> None:
    use_nvml(monkeypatch, nvml)
    body = await capabilities(tmp_path)
    assert backends(body) == {"cpu": [0]}
    assert body["ram_total_bytes"] > 0 and body["disk_free_bytes"] > 0
    assert not offload.asked  # no GPU seen, so llama.cpp is never asked
    if nvml is not None and not nvml.fail_init:
        assert nvml.calls.count("init") == nvml.calls.count("shutdown")


def test_the_offload_probe_matches_the_installed_llama_cpp() -> None:
    # The probe turns any failure into "no offload", so a wrong function name there would
    # make every GPU machine a cpu-only hive without a word. Ask llama.cpp directly (in a
    # child, as the hive does: this process never loads llama.cpp) and compare.
    direct = subprocess.run(
        [sys.executable, "-c", "import llama_cpp; print(llama_cpp.llama_supports_gpu_offload())"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert direct.stdout.strip() in ("True", "False"), direct.stdout
    assert asyncio.run(resources.llama_gpu_offload()) is (direct.stdout.strip() == "True")
