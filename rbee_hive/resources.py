"""What this machine has: RAM, disk, CPU and CUDA devices; and the spawn preflight.

RAM and disk come from psutil on every call. CUDA devices come from NVML
(`nvidia-ml-py`) and are reported only when NVML finds devices *and* the installed
llama-cpp-python was built with GPU offload; that second check runs once, in a child
Python process, so the hive never loads llama.cpp itself (the worker's engine is its only
importer). A machine without a GPU or without NVML gets `cpu` only, unchanged.
All probes are blocking and run in a thread.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import psutil

from shared import __version__
from shared.errors import (
    BackendUnavailable,
    InsufficientRam,
    InsufficientVram,
    ValidationError,
)
from shared.hives import BackendInfo, Capabilities, CudaDevice
from shared.workers import KNOWN_BACKENDS

logger = logging.getLogger(__name__)

RAM_FACTOR = 1.2
_GPU_OFFLOAD_PROBE = (
    "import sys, llama_cpp; sys.exit(0 if llama_cpp.llama_supports_gpu_offload() else 3)"
)


def cuda_devices() -> list[CudaDevice]:
    """Devices NVML reports, or none when NVML (the driver) is absent."""
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return []
    try:
        devices = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            name = pynvml.nvmlDeviceGetName(handle)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            devices.append(
                CudaDevice(
                    index=index,
                    name=name.decode() if isinstance(name, bytes) else str(name),
                    vram_total_bytes=int(memory.total),
                    vram_free_bytes=int(memory.free),
                )
            )
        return devices
    except pynvml.NVMLError as exc:
        logger.warning("NVML query failed: %s", exc, extra={"action": "nvml_error"})
        return []
    finally:
        pynvml.nvmlShutdown()


async def llama_gpu_offload() -> bool:
    """Whether llama-cpp-python can offload to a GPU, asked of a child interpreter."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _GPU_OFFLOAD_PROBE,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    return await proc.wait() == 0


@dataclass
class Resources:
    """Probes the machine; `gpu_offload` is decided once at start."""

    hive_id: str
    data_dir: Path
    gpu_offload: bool = False

    async def start(self) -> None:
        if await asyncio.to_thread(cuda_devices):
            self.gpu_offload = await llama_gpu_offload()
            if not self.gpu_offload:
                logger.warning(
                    "NVML sees GPUs but llama-cpp-python lacks GPU offload; cpu only",
                    extra={"action": "gpu_offload_missing"},
                )

    async def capabilities(self) -> Capabilities:
        return await asyncio.to_thread(self.probe)

    def probe(self) -> Capabilities:
        memory = psutil.virtual_memory()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        backends = [BackendInfo(name="cpu", devices=[0])]
        devices = cuda_devices() if self.gpu_offload else []
        if devices:
            backends.append(BackendInfo(name="cuda", devices=devices))
        return Capabilities(
            id=self.hive_id,
            version=__version__,
            backends=backends,
            ram_total_bytes=int(memory.total),
            ram_free_bytes=int(memory.available),
            disk_free_bytes=int(shutil.disk_usage(self.data_dir).free),
        )


def check_backend_name(backend: str) -> None:
    if backend not in KNOWN_BACKENDS:
        raise ValidationError(
            f"Unknown backend {backend!r}: expected one of {', '.join(KNOWN_BACKENDS)}.",
            param="backend",
            details={"errors": [{"field": "backend", "message": "unknown backend"}]},
        )


def default_backend(caps: Capabilities) -> tuple[str, int]:
    """cuda device 0 where present, else cpu."""
    for info in caps.backends:
        if info.name == "cuda" and info.devices:
            return "cuda", 0
    return "cpu", 0


def preflight(caps: Capabilities, backend: str, device: int, model_bytes: int | None) -> None:
    """Refuse a spawn this machine cannot host; errors carry required and available bytes."""
    info = next((b for b in caps.backends if b.name == backend), None)
    if info is None:
        raise BackendUnavailable(
            f"Backend '{backend}' is not available on hive '{caps.id}'.", param="backend"
        )
    cuda = [d for d in info.devices if isinstance(d, CudaDevice)]
    indices = [d.index for d in cuda] if cuda else [d for d in info.devices if isinstance(d, int)]
    if device not in indices:
        raise BackendUnavailable(
            f"Backend '{backend}' has no device {device} on hive '{caps.id}'.", param="device"
        )
    if model_bytes is None:
        return
    required = int(model_bytes * RAM_FACTOR)
    if backend == "cuda":
        free = next(d.vram_free_bytes for d in cuda if d.index == device)
        if free < required:
            raise InsufficientVram.of(required, free)
    elif caps.ram_free_bytes < required:
        raise InsufficientRam.of(required, caps.ram_free_bytes)
