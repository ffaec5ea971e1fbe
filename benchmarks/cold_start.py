"""Cold start: time to first token for a model no worker serves yet, against the bare model
load time. Target: rbee adds <= 500 ms.

Two paths, each run `--runs` times on a real queen and a real hive (the hive keeps its
standby worker, as it does by default; each run waits until a new standby is idle):

* through the queen, as a client sees it: `POST /v1/completions` (stream) for a model no
  worker serves, to the first token;
* at the hive, split into spawn (request to a process with a pid), model load (process to
  ready) and first token (a request straight to the worker).

The bare load is llama.cpp loading the weights and making one context in a fresh
interpreter, without the interpreter's start or imports: what no server can avoid.

    .venv/bin/python -m benchmarks.cold_start --model gemma --runs 3
    .venv/bin/python -m benchmarks.cold_start --smoke
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from benchmarks._common import (
    VENV_BIN,
    free_port,
    median,
    model_path,
    print_table,
    stop,
    wait_http,
    write_results,
)


def bare_load_s(path: Path) -> float:
    """Weights plus one context, in a fresh interpreter (as a worker would), without the
    interpreter's own start: what llama.cpp alone needs."""
    code = (
        "import time; from pathlib import Path; from llm_worker.engine import Model, Slot\n"
        f"t = time.perf_counter(); m = Model.load(Path({str(path)!r}))\n"
        "Slot(m, n_ctx=4096, n_batch=512, n_threads=2)\n"
        "print(time.perf_counter() - t)"
    )
    out = subprocess.run(
        [str(VENV_BIN / "python"), "-c", code], capture_output=True, text=True, check=True
    )
    return float(out.stdout.strip().splitlines()[-1])


def wait_for_idle_standby(hive_pid: int, timeout: float = 60) -> None:
    """Until the hive has a standby worker that has finished its imports (its CPU time
    stands still), so every run starts as a user's cold start would."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        standbys = [c for c in psutil.Process(hive_pid).children() if "--standby" in c.cmdline()]
        if standbys:
            before = sum(standbys[0].cpu_times()[:2])
            time.sleep(0.3)
            if sum(standbys[0].cpu_times()[:2]) == before:
                return
        else:
            time.sleep(0.05)
    raise TimeoutError("no idle standby worker")


def at_the_hive(hive: str, ref: str) -> dict[str, float]:
    # Clients made before the clock starts: making one costs tens of milliseconds here
    # (its TLS context), which is the benchmark's cost, not rbee's.
    with httpx.Client(base_url=hive, timeout=60) as client, httpx.Client(timeout=60) as direct:
        t0 = time.perf_counter()
        worker = client.post("/v1/workers/spawn", json={"model_ref": ref, "n_ctx": 4096}).json()
        spawned = ready = None
        while ready is None:
            info = client.get(f"/v1/workers/{worker['id']}").json()
            now = time.perf_counter()
            if spawned is None and info.get("pid"):
                spawned = now
            if info["state"] in ("idle", "busy"):
                ready = now
                spawned = spawned or now
            if info["state"] == "failed":
                raise RuntimeError(f"worker failed: {info}")
            time.sleep(0.005)
        body = {"model": "m", "prompt": "Hello", "max_tokens": 1, "stream": True}
        with direct.stream("POST", info["url"] + "/v1/completions", json=body) as response:
            for line in response.iter_lines():
                if line.startswith("data: {"):
                    break
        first = time.perf_counter()
        client.delete(f"/v1/workers/{worker['id']}")
    return {
        "spawn_ms": (spawned - t0) * 1000,
        "load_ms": (ready - spawned) * 1000,
        "first_token_ms": (first - ready) * 1000,
        "total_ms": (first - t0) * 1000,
    }


def through_the_queen(queen: str, ref: str) -> float:
    """Milliseconds from the request to its first token, then the worker is stopped."""
    body = {"model": ref, "prompt": "Hello", "max_tokens": 1, "stream": True}
    with httpx.Client(base_url=queen, timeout=120) as client:
        t0 = time.perf_counter()
        with client.stream("POST", "/v1/completions", json=body) as response:
            if response.status_code != 200:
                raise RuntimeError(f"HTTP {response.status_code}: {response.read()[:300]!r}")
            for line in response.iter_lines():
                if line.startswith("data: {") and '"text"' in line:
                    break
        first = time.perf_counter()
        for worker in client.get("/v2/workers").json()["data"]:
            client.delete(f"/v2/workers/{worker['id']}")
    return (first - t0) * 1000


def start(argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )


def measure(path: Path, runs: int, standby: bool) -> tuple[list[dict[str, float]], list[float]]:
    ref = f"file:{path}"
    with tempfile.TemporaryDirectory() as home:
        queen_port, hive_port = free_port(), free_port()
        queen_url, hive_url = f"http://127.0.0.1:{queen_port}", f"http://127.0.0.1:{hive_port}"
        env = {
            **os.environ,
            "RBEE_HOME": home,
            "RBEE_HIVE_HEARTBEAT_INTERVAL_S": "1",
            "RBEE_HIVE_STANDBY_WORKER": str(standby).lower(),
        }
        queen = start(
            [str(VENV_BIN / "queen-rbee"), "--port", str(queen_port), "--data-dir", home + "/q"],
            env,
        )
        hive = start(
            [
                str(VENV_BIN / "rbee-hive"),
                *("--port", str(hive_port), "--data-dir", home + "/h"),
                *("--queen-url", queen_url, "--log-level", "warning"),
            ],
            env,
        )
        try:
            wait_http(hive_url + "/health")
            wait_http(queen_url + "/health")
            with httpx.stream(
                "POST", hive_url + "/v1/models/download", json={"model_ref": ref}, timeout=600
            ) as response:
                events = [
                    json.loads(x[6:]) for x in response.iter_lines() if x.startswith("data: {")
                ]
            assert events[-1]["type"] == "end", events[-1]
            hive_runs, queen_runs = [], []
            for _ in range(runs):
                if standby:
                    wait_for_idle_standby(hive.pid)
                hive_runs.append(at_the_hive(hive_url, ref))
                if standby:
                    wait_for_idle_standby(hive.pid)
                time.sleep(1.5)  # a heartbeat has told the queen the last worker is gone
                queen_runs.append(through_the_queen(queen_url, ref))
        finally:
            stop(hive)
            stop(queen)
    return hive_runs, queen_runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--plot", action="store_true", help="also draw a PNG (matplotlib)")
    parser.add_argument(
        "--no-standby", action="store_true", help="the hive keeps no standby worker"
    )
    args = parser.parse_args()
    if args.smoke:
        args.model, args.runs = "tiny", 1
    path = model_path(args.model)
    hive_runs, queen_runs = measure(path, args.runs, standby=not args.no_standby)
    bare = median([bare_load_s(path) for _ in range(args.runs)]) * 1000
    summary: dict[str, Any] = {k: median([r[k] for r in hive_runs]) for k in hive_runs[0]}
    summary["queen_total_ms"] = median(queen_runs)
    summary["bare_load_ms"] = bare
    summary["added_ms"] = summary["queen_total_ms"] - bare
    summary["hive_added_ms"] = summary["total_ms"] - bare
    print_table(
        f"cold start, {path.name}, standby worker {'off' if args.no_standby else 'on'}, "
        f"median of {args.runs} (ms)",
        ["path", "spawn", "load", "first token", "total", "bare load", "rbee adds"],
        [
            [
                "at the hive",
                summary["spawn_ms"],
                summary["load_ms"],
                summary["first_token_ms"],
                summary["total_ms"],
                bare,
                summary["hive_added_ms"],
            ],
            ["through the queen", "", "", "", summary["queen_total_ms"], bare, summary["added_ms"]],
        ],
    )
    name = args.model if args.model in ("tiny", "gemma") else "custom"
    write_results(
        f"cold_start_{name}{'_no_standby' if args.no_standby else ''}",
        {
            "model": path.name,
            "standby": not args.no_standby,
            "hive_runs": hive_runs,
            "queen_runs_ms": queen_runs,
            "summary": summary,
            "target_added_ms": 500,
        },
        smoke=args.smoke,
        plot=args.plot,
    )


if __name__ == "__main__":
    main()
