"""What the queen adds on the token path: the same streams direct to workers and through it.

Starts real processes: `--workers` llm-worker-rbee processes on the tiny test model (each
with `--slots` contexts) and one queen-rbee that learns about them from a heartbeat this
script sends (no hive: the hive is not on the token path). Then, for each concurrency level,
runs the same streaming workload (`POST /v1/completions`, `stream: true`) twice: straight to
the workers (round robin) and through the queen. Prints time to first byte p50/p99 and
tokens/s for both and their ratio, and writes the figures as JSON.

    .venv/bin/python -m benchmarks.relay_overhead [--levels 1,50,200] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp
import httpx

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_healthy(url: str, path: str = "/health", timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + path, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise SystemExit(f"{url}{path} did not become healthy")


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


async def one_stream(session: aiohttp.ClientSession, url: str, body: bytes) -> tuple[float, int]:
    started = time.perf_counter()
    ttfb = 0.0
    tokens = 0
    tail = b""
    async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
        if r.status != 200:
            raise RuntimeError(f"HTTP {r.status}: {(await r.read())[:200]!r}")
        async for chunk in r.content.iter_any():
            if not ttfb:
                ttfb = time.perf_counter() - started
            data = tail + chunk
            tokens += data.count(b'"finish_reason":null')
            tail = data[-24:]
            tokens -= tail.count(b'"finish_reason":null')
        tokens += tail.count(b'"finish_reason":null')
    return ttfb, tokens


async def run_level(
    name: str, urls: list[str], concurrency: int, requests: int, body: bytes
) -> Result:
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
    ttfbs: list[float] = []
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
                ttfb, count = await one_stream(session, url, body)
            except (aiohttp.ClientError, RuntimeError) as exc:
                errors += 1
                print(f"  {name}: {exc}", file=sys.stderr)
                continue
            ttfbs.append(ttfb)
            tokens += count

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        started = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
        wall = time.perf_counter() - started
    ttfbs.sort()
    p99 = ttfbs[min(len(ttfbs) - 1, int(len(ttfbs) * 0.99))] if ttfbs else float("nan")
    return Result(
        name,
        concurrency,
        requests,
        statistics.median(ttfbs) * 1000 if ttfbs else float("nan"),
        p99 * 1000,
        tokens,
        wall,
        tokens / wall if wall else 0.0,
        errors,
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


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", default="1,50,200", help="concurrent streams per run")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--slots", type=int, default=50, help="slots per worker")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2, help="requests per stream slot")
    parser.add_argument("--json", type=Path, default=Path("relay_overhead.json"))
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",")]

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.tinymodel import tiny_model_path

    root = Path(tempfile.mkdtemp(prefix="rbee-bench-"))
    model = tiny_model_path(root)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        workers = []
        for i in range(args.workers):
            port = free_port()
            procs.append(
                start(
                    [
                        str(BIN / "llm-worker-rbee"),
                        "--worker-id",
                        f"bench-{i}",
                        "--model",
                        str(model),
                        "--model-ref",
                        "tiny",
                        "--port",
                        str(port),
                        "--slots",
                        str(args.slots),
                        "--n-ctx",
                        "256",
                        "--log-level",
                        "warning",
                    ],
                    root / f"worker-{i}.log",
                    {"RBEE_WORKER_THREADS": "1"},
                )
            )
            workers.append(f"http://127.0.0.1:{port}")
        queen_port = free_port()
        queen = f"http://127.0.0.1:{queen_port}"
        procs.append(
            start(
                [
                    str(BIN / "queen-rbee"),
                    "--port",
                    str(queen_port),
                    "--data-dir",
                    str(root / "q"),
                    "--log-level",
                    "warning",
                ],
                root / "queen.log",
                {
                    "RBEE_QUEEN_QUEUE_SIZE": "10000",
                    "RBEE_QUEEN_HIVE_STALE_AFTER_S": "3600",
                    "RBEE_QUEEN_HIVE_OFFLINE_AFTER_S": "7200",
                },
            )
        )
        for url in workers:
            wait_healthy(url, "/v1/ready")
        wait_healthy(queen)
        beat = {
            "url": "http://127.0.0.1:9",
            "models": ["tiny"],
            "workers": [
                {
                    "id": f"bench-{i}",
                    "state": "idle",
                    "url": url,
                    "model": "tiny",
                    "slots": {"total": args.slots, "busy": 0},
                }
                for i, url in enumerate(workers)
            ],
        }
        httpx.post(f"{queen}/v2/hives/bench/heartbeat", json=beat).raise_for_status()

        body = json.dumps(
            {
                "model": "tiny",
                "prompt": "Once upon a time",
                "stream": True,
                "max_tokens": args.max_tokens,
                "temperature": 0.8,
            }
        ).encode()
        results: list[Result] = []
        asyncio.run(run_level("warmup", [u + "/v1/completions" for u in workers], 4, 8, body))
        for level in levels:
            requests = max(10, level * args.rounds)
            direct = asyncio.run(
                run_level("direct", [u + "/v1/completions" for u in workers], level, requests, body)
            )
            relayed = asyncio.run(
                run_level("queen", [queen + "/v1/completions"], level, requests, body)
            )
            results += [direct, relayed]
        report(results)
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2))
        print(f"\nwritten {args.json}")
    finally:
        stop(procs)


def report(results: list[Result]) -> None:
    head = (
        f"{'streams':>7} {'target':>7} {'ttfb p50 ms':>12} {'ttfb p99 ms':>12} "
        f"{'tokens/s':>10} {'errors':>6}"
    )
    print(head)
    print("-" * len(head))
    for r in results:
        print(
            f"{r.concurrency:>7} {r.target:>7} {r.ttfb_p50_ms:>12.2f} {r.ttfb_p99_ms:>12.2f} "
            f"{r.tokens_per_s:>10.0f} {r.errors:>6}"
        )
    print("\nqueen / direct")
    print(f"{'streams':>7} {'ttfb p50':>10} {'ttfb p99':>10} {'tokens/s':>10}")
    for direct, queen in zip(results[::2], results[1::2], strict=True):
        print(
            f"{direct.concurrency:>7} {queen.ttfb_p50_ms / direct.ttfb_p50_ms:>10.2f} "
            f"{queen.ttfb_p99_ms / direct.ttfb_p99_ms:>10.2f} "
            f"{queen.tokens_per_s / direct.tokens_per_s:>10.2f}"
        )


if __name__ == "__main__":
    main()
