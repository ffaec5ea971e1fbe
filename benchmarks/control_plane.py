"""Control-plane scale: the scheduler's decision time with many workers, and the queen's
CPU time to absorb heartbeats from many hives.

1. Decision time: the queen's real :class:`~queen_rbee.dispatcher.Dispatcher` over a real
   :class:`~queen_rbee.registry.Registry` (SQLite in a temporary folder) filled by
   heartbeats with 10, 1,000 and 10,000 workers (ten per hive, twenty per model), timing
   `try_lease` (gather the model's candidates, pick one, count it in flight) and the
   release. Also the worst case: every worker serving the one model asked for.
   Target: <= 100 us at 10,000 workers.
2. Heartbeats: a real `queen-rbee` process with a cluster secret, and 1,000 simulated
   hives, each a real HTTP client that registers (`PUT /v2/hives/{id}`) and then sends a
   full snapshot (two workers, capabilities, two models) every 5 s, spread evenly over
   the interval, each with its own JWT (role `hive`, reused for half its life, as a
   real hive's `Credentials.bearer_for` does). The
   queen's own CPU time (user + system) over whole intervals, as a share of one core.
   Target: < 10 %.

    .venv/bin/python -m benchmarks.control_plane
    .venv/bin/python -m benchmarks.control_plane --smoke     # CI: tiny sizes
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from benchmarks._common import (
    VENV_BIN,
    free_port,
    percentile,
    print_table,
    stop,
    wait_http,
    write_results,
)
from queen_rbee.dispatcher import Dispatcher
from queen_rbee.registry import Registry
from shared.auth import Audience, Role, mint_token
from shared.hives import Heartbeat
from shared.workers import Slots, WorkerInfo

WORKERS_PER_HIVE = 10
WORKERS_PER_MODEL = 20
HEARTBEAT_INTERVAL_S = 5.0
SECRET = "benchmark-cluster-secret-0123456789abcdef"
TOKEN_TTL_S = 60  # what a hive asks for (rbee_hive.heartbeat)


# ---- 1. scheduler decision time ----------------------------------------------------------


def _worker(hive: int, index: int, model: str) -> WorkerInfo:
    return WorkerInfo(
        id=f"w-{hive}-{index}",
        state="idle",
        url=f"http://10.0.{hive // 250}.{hive % 250}:{8001 + index}",
        model=model,
        slots=Slots(total=4, busy=0),
    )


async def _filled_dispatcher(folder: Path, n_workers: int, n_models: int) -> Dispatcher:
    registry = Registry(folder / "queen.db", stale_after=3600, offline_after=7200)
    await registry.open()
    hives = max(1, n_workers // WORKERS_PER_HIVE)
    made = 0
    for h in range(hives):
        count = min(WORKERS_PER_HIVE, n_workers - made)
        workers = [_worker(h, i, f"model-{(made + i) % n_models}") for i in range(count)]
        made += count
        beat = Heartbeat(url=f"http://hive-{h}:9200", workers=workers, models=[])
        await registry.heartbeat(f"hive-{h}", beat)
    return Dispatcher(
        registry,
        control=None,  # type: ignore[arg-type]  # decisions never call a hive
        queue_size=64,
        max_workers_per_model=1,
        cold_start_timeout_s=60,
        quarantine_s=10,
    )


async def decision_times(n_workers: int, n_models: int, rounds: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as folder:
        dispatcher = await _filled_dispatcher(Path(folder), n_workers, n_models)
        try:
            samples: list[float] = []
            for i in range(rounds):
                model = f"model-{i % n_models}"
                started = time.perf_counter()
                lease = dispatcher.try_lease(model, set())
                took = time.perf_counter() - started
                assert lease is not None, "every model has an idle worker"
                lease.release()
                samples.append(took * 1e6)
        finally:
            await dispatcher.registry.close()
    return {
        "workers": n_workers,
        "models": n_models,
        "candidates_per_decision": max(1, n_workers // n_models),
        "p50_us": statistics.median(samples),
        "p99_us": percentile(samples, 99),
    }


# ---- 2. heartbeat absorption ------------------------------------------------------------


def _snapshot(hive: int, url: str) -> bytes:
    workers = [_worker(hive, i, f"model-{(hive * 2 + i) % 500}") for i in range(2)]
    caps = {
        "id": f"sim-{hive}",
        "version": "0.1.0",
        "backends": [
            {"name": "cpu", "devices": [0]},
            {
                "name": "cuda",
                "devices": [
                    {
                        "index": 0,
                        "name": "NVIDIA H100 80GB HBM3",
                        "vram_total_bytes": 85_520_809_984,
                        "vram_free_bytes": 60_000_000_000,
                    }
                ],
            },
        ],
        "ram_total_bytes": 540_000_000_000,
        "ram_free_bytes": 400_000_000_000,
        "disk_free_bytes": 2_000_000_000_000,
    }
    beat = Heartbeat.model_validate(
        {
            "url": url,
            "workers": [w.model_dump(mode="json") for w in workers],
            "capabilities": caps,
            "models": [f"hf:org/model-{hive % 500}", "gemma3-270m"],
        }
    )
    return beat.model_dump_json().encode()


async def _simulated_hive(
    session: aiohttp.ClientSession, queen: str, hive: int, offset: float, until: float
) -> int:
    """Register, then beat every interval from `offset` on; returns the failed requests."""
    hive_id = f"sim-{hive}"
    url = f"http://10.1.{hive // 250}.{hive % 250}:9200"
    body = _snapshot(hive, url)
    failures = 0
    registration = f'{{"url": "{url}", "version": "0.1.0"}}'.encode()
    headers, minted = _headers(), time.monotonic()
    async with session.put(f"{queen}/v2/hives/{hive_id}", data=registration, headers=headers) as r:
        failures += r.status != 200
    loop = asyncio.get_running_loop()
    next_beat = loop.time() + offset
    while next_beat < until:
        await asyncio.sleep(max(0.0, next_beat - loop.time()))
        if time.monotonic() - minted > TOKEN_TTL_S / 2:
            headers, minted = _headers(), time.monotonic()
        async with session.post(
            f"{queen}/v2/hives/{hive_id}/heartbeat", data=body, headers=headers
        ) as r:
            await r.read()
            failures += r.status != 200
        next_beat += HEARTBEAT_INTERVAL_S
    return failures


def _headers() -> dict[str, str]:
    token = mint_token(SECRET, role=Role.HIVE, audience=Audience.QUEEN, ttl_s=TOKEN_TTL_S)
    return {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}


def _cpu_s(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


def heartbeat_cpu(hives: int, intervals: int) -> dict[str, Any]:
    """The queen's CPU share while `hives` beat; the first interval (registrations) is
    left out of the measurement."""
    port = free_port()
    queen = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as home:
        secret = Path(home) / "jwt.secret"
        secret.write_text(SECRET)
        secret.chmod(0o600)
        proc = subprocess.Popen(
            [
                str(VENV_BIN / "queen-rbee"),
                *("--port", str(port), "--data-dir", home, "--jwt-secret-file", str(secret)),
            ],
            env={**os.environ, "RBEE_QUEEN_LOG_LEVEL": "warning"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            wait_http(queen + "/health")
            process = psutil.Process(proc.pid)
            result = asyncio.run(_beat(queen, process, hives, intervals))
            result["queen_rss_mib"] = process.memory_info().rss / 2**20
        finally:
            stop(proc)
    return result


async def _beat(queen: str, process: psutil.Process, hives: int, intervals: int) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    until = loop.time() + HEARTBEAT_INTERVAL_S * (intervals + 1)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        senders = [
            asyncio.create_task(
                _simulated_hive(session, queen, h, HEARTBEAT_INTERVAL_S * h / hives, until)
            )
            for h in range(hives)
        ]
        await asyncio.sleep(HEARTBEAT_INTERVAL_S)  # registrations and first beats
        cpu0, wall0 = _cpu_s(process), loop.time()
        await asyncio.sleep(until - loop.time() - 0.05)
        cpu1, wall1 = _cpu_s(process), loop.time()
        failures = sum(await asyncio.gather(*senders))
    cpu, wall = cpu1 - cpu0, wall1 - wall0
    beats = hives * wall / HEARTBEAT_INTERVAL_S
    return {
        "hives": hives,
        "interval_s": HEARTBEAT_INTERVAL_S,
        "measured_s": wall,
        "queen_cpu_s": cpu,
        "core_share_pct": 100 * cpu / wall,
        "cpu_per_heartbeat_us": 1e6 * cpu / beats,
        "failed_requests": failures,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="10,1000,10000", help="registry sizes")
    parser.add_argument("--rounds", type=int, default=2000, help="decisions per size")
    parser.add_argument("--hives", type=int, default=1000, help="simulated hives")
    parser.add_argument("--intervals", type=int, default=4, help="heartbeat intervals measured")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (CI)")
    parser.add_argument("--plot", action="store_true", help="also draw a PNG (matplotlib)")
    args = parser.parse_args()
    if args.smoke:
        args.workers, args.rounds, args.hives, args.intervals = "10,100", 50, 10, 1
    sizes = [int(x) for x in args.workers.split(",")]

    decisions = [
        asyncio.run(decision_times(n, max(1, n // WORKERS_PER_MODEL), args.rounds)) for n in sizes
    ]
    largest = sizes[-1]
    decisions.append(asyncio.run(decision_times(largest, 1, max(10, args.rounds // 10))))
    print_table(
        "scheduler decision (try_lease + release), real dispatcher and registry",
        ["workers", "models", "candidates", "p50 us", "p99 us"],
        [
            [d["workers"], d["models"], d["candidates_per_decision"], d["p50_us"], d["p99_us"]]
            for d in decisions
        ],
    )

    beats = heartbeat_cpu(args.hives, args.intervals)
    print_table(
        f"queen absorbing heartbeats every {HEARTBEAT_INTERVAL_S:.0f} s",
        ["hives", "measured s", "queen CPU s", "% of one core", "CPU us/beat", "failed"],
        [
            [
                beats["hives"],
                beats["measured_s"],
                beats["queen_cpu_s"],
                beats["core_share_pct"],
                beats["cpu_per_heartbeat_us"],
                beats["failed_requests"],
            ]
        ],
    )
    write_results(
        "control_plane",
        {
            "decisions": decisions,
            "heartbeats": beats,
            "targets": {"decision_us_at_10000": 100, "heartbeat_core_share_pct": 10},
        },
        smoke=args.smoke,
        plot=args.plot,
    )


if __name__ == "__main__":
    main()
