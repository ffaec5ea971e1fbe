"""What the queen adds on the token path: the same streams direct to workers and through it.

Starts real processes: enough llm-worker-rbee processes on the tiny test model (64
contexts each) that every stream of the highest level has a slot, and one queen-rbee
that learns about them from a heartbeat this script sends (no hive: the hive is not on
the token path). Then, for each concurrency level, runs the same streaming workload
(`POST /v1/completions`, `stream: true`) twice: straight to the workers (round robin) and
through the queen. Prints time to first byte p50/p99, tokens/s and errors for both and
their ratio, and the queen's resident memory at rest and at the peak of each level.

On a machine with few cores the workers and the queen share the CPU, so at high levels
the ratio also measures the queen's CPU taking time from the workers.

    .venv/bin/python -m benchmarks.relay_overhead [--levels 1,50,200,1000]
    .venv/bin/python -m benchmarks.relay_overhead --smoke      # CI: tiny sizes
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp
import httpx
import psutil

from benchmarks._common import (
    VENV_BIN,
    free_port,
    model_path,
    percentile,
    print_table,
    stop,
    wait_http,
    write_results,
)

SLOTS_PER_WORKER = 64  # the worker's upper limit


@dataclass
class Result:
    target: str
    concurrency: int
    requests: int
    ttfb_p50_ms: float
    ttfb_p99_ms: float
    tokens: int
    wall_s: float
    tokens_per_s: float
    errors: int
    queen_peak_rss_mib: float = 0.0
    # what the queen itself reports (X-Rbee-Overhead-Ms): its own time before the first
    # upstream byte, free of the CPU queueing that the workers cause on a small machine
    overhead_p50_ms: float = float("nan")
    overhead_p99_ms: float = float("nan")


async def one_stream(
    session: aiohttp.ClientSession, url: str, body: bytes
) -> tuple[float, int, float | None]:
    started = time.perf_counter()
    ttfb = 0.0
    tokens = 0
    tail = b""
    async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
        if r.status != 200:
            raise RuntimeError(f"HTTP {r.status}: {(await r.read())[:200]!r}")
        overhead = r.headers.get("X-Rbee-Overhead-Ms")
        async for chunk in r.content.iter_any():
            if not ttfb:
                ttfb = time.perf_counter() - started
            data = tail + chunk
            tokens += data.count(b'"finish_reason":null')
            tail = data[-24:]
            tokens -= tail.count(b'"finish_reason":null')
        tokens += tail.count(b'"finish_reason":null')
    return ttfb, tokens, float(overhead) if overhead is not None else None


async def run_level(
    name: str, urls: list[str], concurrency: int, requests: int, body: bytes
) -> Result:
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
    ttfbs: list[float] = []
    overheads: list[float] = []
    tokens = 0
    errors = 0
    targets = itertools.cycle(urls)
    queue: asyncio.Queue[str] = asyncio.Queue()
    for _ in range(requests):
        queue.put_nowait(next(targets))

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal tokens, errors
        while not queue.empty():
            url = queue.get_nowait()
            try:
                ttfb, count, overhead = await one_stream(session, url, body)
            except (aiohttp.ClientError, RuntimeError) as exc:
                errors += 1
                print(f"  {name}: {exc}", file=sys.stderr)
                continue
            ttfbs.append(ttfb)
            tokens += count
            if overhead is not None:
                overheads.append(overhead)

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        started = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
        wall = time.perf_counter() - started
    return Result(
        name,
        concurrency,
        requests,
        statistics.median(ttfbs) * 1000 if ttfbs else float("nan"),
        percentile(ttfbs, 99) * 1000,
        tokens,
        wall,
        tokens / wall if wall else 0.0,
        errors,
        overhead_p50_ms=statistics.median(overheads) if overheads else float("nan"),
        overhead_p99_ms=percentile(overheads, 99) if overheads else float("nan"),
    )


def start(argv: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env},
            start_new_session=True,
        )


@contextmanager
def peak_rss(pid: int) -> Iterator[list[float]]:
    """Samples the resident memory of `pid` every 50 ms; yields [peak MiB] filled at exit."""
    process, peak, done = psutil.Process(pid), [0.0], threading.Event()

    def sample() -> None:
        while not done.wait(0.05):
            peak[0] = max(peak[0], process.memory_info().rss / 2**20)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield peak
    finally:
        done.set()
        sampler.join()


def start_workers(
    model: Path, count: int, root: Path, n_ctx: int = 256
) -> tuple[list[subprocess.Popen[bytes]], list[str]]:
    procs, urls = [], []
    for i in range(count):
        port = free_port()
        argv = [
            str(VENV_BIN / "llm-worker-rbee"),
            *("--worker-id", f"bench-{i}", "--model", str(model), "--model-ref", "tiny"),
            *("--port", str(port), "--slots", str(SLOTS_PER_WORKER), "--n-ctx", str(n_ctx)),
            *("--log-level", "warning"),
        ]
        procs.append(start(argv, root / f"worker-{i}.log", {"RBEE_WORKER_THREADS": "1"}))
        urls.append(f"http://127.0.0.1:{port}")
    return procs, urls


def start_queen(root: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    argv = [
        str(VENV_BIN / "queen-rbee"),
        *("--port", str(port), "--data-dir", str(root / "q"), "--log-level", "warning"),
    ]
    env = {
        "RBEE_QUEEN_QUEUE_SIZE": "10000",
        "RBEE_QUEEN_HIVE_STALE_AFTER_S": "3600",
        "RBEE_QUEEN_HIVE_OFFLINE_AFTER_S": "7200",
    }
    return start(argv, root / "queen.log", env), f"http://127.0.0.1:{port}"


def announce(queen: str, workers: list[str]) -> None:
    """Once the workers and the queen are up, tell the queen about the workers with one
    heartbeat of a hive that is not there: the hive is not on the token path."""
    for url in workers:
        wait_http(url + "/v1/ready", timeout=120)
    wait_http(queen + "/health")
    beat = {
        "url": "http://127.0.0.1:9",
        "models": ["tiny"],
        "workers": [
            {
                "id": f"bench-{i}",
                "state": "idle",
                "url": url,
                "model": "tiny",
                "slots": {"total": SLOTS_PER_WORKER, "busy": 0},
            }
            for i, url in enumerate(workers)
        ],
    }
    httpx.post(f"{queen}/v2/hives/bench/heartbeat", json=beat).raise_for_status()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", default="1,50,200,1000", help="concurrent streams per run")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2, help="requests per stream slot")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (CI)")
    parser.add_argument("--plot", action="store_true", help="also draw a PNG (matplotlib)")
    args = parser.parse_args()
    if args.smoke:
        args.levels, args.max_tokens, args.rounds = "1,4", 8, 1
    levels = [int(x) for x in args.levels.split(",")]
    model = model_path("tiny")
    root = Path(tempfile.mkdtemp(prefix="rbee-bench-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs, workers = start_workers(model, math.ceil(max(levels) / SLOTS_PER_WORKER), root)
        queen_proc, queen = start_queen(root)
        procs.append(queen_proc)
        announce(queen, workers)
        body = json.dumps(
            {
                "model": "tiny",
                "prompt": "Once upon a time",
                "stream": True,
                "max_tokens": args.max_tokens,
                "temperature": 0.8,
            }
        ).encode()
        direct_urls = [u + "/v1/completions" for u in workers]
        asyncio.run(run_level("warmup", direct_urls, 4, 8, body))
        asyncio.run(run_level("warmup", [queen + "/v1/completions"], 4, 8, body))
        queen_rest_mib = psutil.Process(queen_proc.pid).memory_info().rss / 2**20
        results: list[Result] = []
        for level in levels:
            requests = max(10, level * args.rounds)
            direct = asyncio.run(run_level("direct", direct_urls, level, requests, body))
            with peak_rss(queen_proc.pid) as peak:
                relayed = asyncio.run(
                    run_level("queen", [queen + "/v1/completions"], level, requests, body)
                )
            relayed.queen_peak_rss_mib = peak[0]
            results += [direct, relayed]
    finally:
        stop_all(procs)
    report(results, queen_rest_mib)
    write_results(
        "relay_overhead",
        {
            "model": model.name,
            "workers": len(workers),
            "slots_per_worker": SLOTS_PER_WORKER,
            "max_tokens": args.max_tokens,
            "queen_rest_rss_mib": queen_rest_mib,
            "results": [asdict(r) for r in results],
            "targets": {
                "added_ttfb_p50_ms_at_50": 2,
                "added_ttfb_p99_ms_at_50": 10,
                "ratio_at_200": 1.5,
                "errors_at_1000": 0,
            },
        },
        smoke=args.smoke,
        plot=args.plot,
    )


def stop_all(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        stop(proc)


def report(results: list[Result], queen_rest_mib: float) -> None:
    print_table(
        "streams direct to the workers and through the queen",
        ["streams", "target", "ttfb p50 ms", "ttfb p99 ms", "tokens/s", "errors", "queen MiB"],
        [
            [
                r.concurrency,
                r.target,
                r.ttfb_p50_ms,
                r.ttfb_p99_ms,
                r.tokens_per_s,
                r.errors,
                r.queen_peak_rss_mib or "",
            ]
            for r in results
        ],
    )
    print_table(
        f"queen vs direct (queen at rest: {queen_rest_mib:.0f} MiB)",
        [
            "streams",
            "added ttfb p50 ms",
            "added ttfb p99 ms",
            "ttfb p50 x",
            "tokens/s x",
            "queen's own p50/p99 ms",
        ],
        [
            [
                d.concurrency,
                q.ttfb_p50_ms - d.ttfb_p50_ms,
                q.ttfb_p99_ms - d.ttfb_p99_ms,
                q.ttfb_p50_ms / d.ttfb_p50_ms,
                q.tokens_per_s / d.tokens_per_s,
                f"{q.overhead_p50_ms:.2f} / {q.overhead_p99_ms:.2f}",
            ]
            for d, q in zip(results[::2], results[1::2], strict=True)
        ],
    )


if __name__ == "__main__":
    main()
