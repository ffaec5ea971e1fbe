"""Resident memory: the queen with many open streams, the hive, and a worker beyond its model.

1. Queen: real workers on the tiny model (64 contexts each, enough for every stream) and a
   real queen that learns about them from one heartbeat. The queen's RSS at rest, then with
   N streams open at once (each has received its first bytes and is still generating),
   and per open stream.
2. Hive: RSS of a real idle hive, then while it supervises one worker.
3. Worker: RSS of a real `llm-worker-rbee` once ready, against a bare Python process that
   loads the same model with llama-cpp-python's low-level API and makes the same contexts
   (what llama.cpp itself needs); the difference is what rbee adds.

    .venv/bin/python -m benchmarks.memory [--streams 1000] [--model gemma]
    .venv/bin/python -m benchmarks.memory --smoke
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import psutil

from benchmarks._common import (
    VENV_BIN,
    free_port,
    model_path,
    print_table,
    stop,
    wait_http,
    write_results,
)
from benchmarks.relay_overhead import (
    SLOTS_PER_WORKER,
    announce,
    start_queen,
    start_workers,
    stop_all,
)

MIB = 2**20


def rss_mib(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / MIB


# ---- 1. the queen with open streams ----------------------------------------------------


async def _hold_streams(queen: str, count: int, queen_pid: int) -> tuple[float, int]:
    """Open `count` streams through the queen, wait for all first bytes, measure, close."""
    body = json.dumps(
        {"model": "tiny", "prompt": "Once upon a time", "stream": True, "max_tokens": 4000}
    ).encode()
    opened = asyncio.Event()
    started = 0
    errors = 0
    release = asyncio.Event()

    async def one(session: aiohttp.ClientSession) -> None:
        nonlocal started, errors
        try:
            async with session.post(
                queen + "/v1/completions", data=body, headers={"Content-Type": "application/json"}
            ) as response:
                if response.status != 200:
                    errors += 1
                    return
                await response.content.readany()
                started += 1
                if started + errors == count:
                    opened.set()
                await release.wait()  # the stream stays open; we leave it unread
        except aiohttp.ClientError:
            errors += 1
        finally:
            if started + errors == count:
                opened.set()

    timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), timeout=timeout
    ) as session:
        tasks = [asyncio.create_task(one(session)) for _ in range(count)]
        await asyncio.wait_for(opened.wait(), timeout=300)
        await asyncio.sleep(1.0)  # let every relay settle into its steady state
        peak = rss_mib(queen_pid)
        release.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return peak, errors


def queen_memory(streams: int) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="rbee-mem-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        # Long contexts and long answers, so no stream ends while the others open.
        count = math.ceil(streams / SLOTS_PER_WORKER)
        procs, workers = start_workers(model_path("tiny"), count, root, n_ctx=4096)
        queen_proc, queen = start_queen(root)
        procs.append(queen_proc)
        announce(queen, workers)
        asyncio.run(_hold_streams(queen, 4, queen_proc.pid))  # warm up every code path
        rest = rss_mib(queen_proc.pid)
        loaded, errors = asyncio.run(_hold_streams(queen, streams, queen_proc.pid))
    finally:
        stop_all(procs)
    return {
        "streams": streams,
        "rest_mib": rest,
        "open_mib": loaded,
        "per_stream_kib": (loaded - rest) * 1024 / streams,
        "errors": errors,
    }


# ---- 2. the hive ----------------------------------------------------------------------------


def hive_memory() -> dict[str, Any]:
    model = model_path("tiny")
    with tempfile.TemporaryDirectory() as home:
        port = free_port()
        hive = subprocess.Popen(
            [str(VENV_BIN / "rbee-hive"), "--port", str(port), "--data-dir", home],
            env={**os.environ, "RBEE_HOME": home, "RBEE_HIVE_LOG_LEVEL": "warning"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            wait_http(url + "/health")
            time.sleep(1.0)
            idle = rss_mib(hive.pid)
            with httpx.Client(base_url=url, timeout=60) as client:
                worker = client.post(
                    "/v1/workers/spawn", json={"model_ref": f"file:{model}"}
                ).json()
                deadline = time.monotonic() + 60
                while client.get(f"/v1/workers/{worker['id']}").json()["state"] != "idle":
                    if time.monotonic() > deadline:
                        raise TimeoutError("the worker did not become ready")
                    time.sleep(0.05)
                time.sleep(1.0)  # a health check or two
                supervising = rss_mib(hive.pid)
                client.delete(f"/v1/workers/{worker['id']}")
        finally:
            stop(hive)
    return {"idle_mib": idle, "with_one_worker_mib": supervising}


# ---- 3. a worker beyond its model -------------------------------------------------------


def _bare_rss_mib(path: Path, n_ctx: int, threads: int) -> float:
    code = (
        "from pathlib import Path\n"
        "from llm_worker.engine import Model, Slot\n"
        f"m = Model.load(Path({str(path)!r}))\n"
        f"s = Slot(m, n_ctx={n_ctx}, n_batch=512, n_threads={threads})\n"
        "from llm_worker.engine import GenerationParams\n"
        "s.generate(GenerationParams(m.tokenize('Hello'), 8), lambda t: None)\n"
        "import psutil; print(psutil.Process().memory_info().rss)\n"
    )
    out = subprocess.run(
        [str(VENV_BIN / "python"), "-c", code], capture_output=True, text=True, check=True
    )
    return int(out.stdout.strip().splitlines()[-1]) / MIB


def worker_memory(name: str, n_ctx: int = 4096, threads: int = 2) -> dict[str, Any]:
    path = model_path(name)
    port = free_port()
    proc = subprocess.Popen(
        [
            str(VENV_BIN / "llm-worker-rbee"),
            *("--model", str(path), "--port", str(port), "--n-ctx", str(n_ctx)),
            *("--threads", str(threads), "--log-level", "warning"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/v1/ready", timeout=120)
        body = {"model": "m", "prompt": "Hello", "max_tokens": 8}
        httpx.post(url + "/v1/completions", json=body, timeout=60).raise_for_status()
        worker = rss_mib(proc.pid)
    finally:
        stop(proc)
    bare = _bare_rss_mib(path, n_ctx, threads)
    return {
        "model": path.name,
        "file_mib": path.stat().st_size / MIB,
        "worker_mib": worker,
        "bare_llama_cpp_mib": bare,
        "added_mib": worker - bare,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--model", default="gemma", help="model of the worker measurement")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (CI)")
    parser.add_argument("--plot", action="store_true", help="also draw a PNG (matplotlib)")
    args = parser.parse_args()
    if args.smoke:
        args.streams, args.model = 8, "tiny"
    queen = queen_memory(args.streams)
    hive = hive_memory()
    worker = worker_memory(args.model)
    print_table(
        "resident memory (MiB)",
        ["process", "at rest", "loaded", "what 'loaded' means", "added"],
        [
            [
                "queen-rbee",
                queen["rest_mib"],
                queen["open_mib"],
                f"{queen['streams']} open streams ({queen['errors']} errors)",
                f"{queen['per_stream_kib']:.1f} KiB/stream",
            ],
            [
                "rbee-hive",
                hive["idle_mib"],
                hive["with_one_worker_mib"],
                "with 1 worker",
                "",
            ],
            [
                "llm-worker-rbee",
                worker["bare_llama_cpp_mib"],
                worker["worker_mib"],
                f"{worker['model']} ready; 'at rest' = bare llama.cpp",
                f"{worker['added_mib']:.0f} MiB",
            ],
        ],
    )
    write_results(
        "memory",
        {"queen": queen, "hive": hive, "worker": worker},
        smoke=args.smoke,
        plot=args.plot,
    )


if __name__ == "__main__":
    main()
