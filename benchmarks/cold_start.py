"""Cold start: time to first token for a model no worker serves yet, split into spawn
(request to process started), model load (process to ready) and first token, against the
bare model load time in-process. Target: rbee adds <= 500 ms.

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


def worker_import_s() -> float:
    code = (
        "import time; t = time.perf_counter(); import llm_worker.app\n"
        "print(time.perf_counter() - t)"
    )
    out = subprocess.run(
        [str(VENV_BIN / "python"), "-c", code], capture_output=True, text=True, check=True
    )
    return float(out.stdout.strip())


def one_cold_start(hive: str, ref: str) -> dict[str, float]:
    with httpx.Client(base_url=hive, timeout=60) as client:
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
        with httpx.stream("POST", info["url"] + "/v1/completions", json=body) as response:
            for line in response.iter_lines():
                if line.startswith("data: {"):
                    break
        first = time.perf_counter()
        client.delete(f"/v1/workers/{worker['id']}")
        while any(w["id"] == worker["id"] for w in client.get("/v1/workers").json()["data"]):
            time.sleep(0.01)
    return {
        "spawn_ms": (spawned - t0) * 1000,
        "load_ms": (ready - spawned) * 1000,
        "first_token_ms": (first - ready) * 1000,
        "total_ms": (first - t0) * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="gemma")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    if args.smoke:
        args.model, args.runs = "tiny", 1
    path = model_path(args.model)
    ref = f"file:{path}"
    with tempfile.TemporaryDirectory() as home:
        port = free_port()
        env = {**os.environ, "RBEE_HOME": home, "RBEE_HIVE_HEALTH_CHECK_INTERVAL_S": "0.2"}
        hive = subprocess.Popen(
            [
                str(VENV_BIN / "rbee-hive"),
                "--port",
                str(port),
                "--data-dir",
                home,
                "--log-level",
                "warning",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            wait_http(url + "/health")
            with httpx.stream(
                "POST", url + "/v1/models/download", json={"model_ref": ref}, timeout=600
            ) as response:
                events = [
                    json.loads(x[6:]) for x in response.iter_lines() if x.startswith("data: {")
                ]
            assert events[-1]["type"] == "end", events[-1]
            runs = [one_cold_start(url, ref) for _ in range(args.runs)]
        finally:
            stop(hive)
    bare = median([bare_load_s(path) for _ in range(args.runs)]) * 1000
    imports = worker_import_s() * 1000
    summary: dict[str, Any] = {k: median([r[k] for r in runs]) for k in runs[0]}
    summary["bare_load_ms"] = bare
    summary["added_ms"] = summary["total_ms"] - bare
    summary["worker_import_ms"] = imports
    print_table(
        f"cold start, {path.name}, median of {args.runs}",
        [
            "spawn ms",
            "load ms",
            "first token ms",
            "total ms",
            "bare load ms",
            "rbee adds ms",
            "of which worker imports ms",
        ],
        [
            [
                summary["spawn_ms"],
                summary["load_ms"],
                summary["first_token_ms"],
                summary["total_ms"],
                bare,
                summary["added_ms"],
                imports,
            ]
        ],
    )
    write_results(
        f"cold_start_{args.model if args.model in ('tiny', 'gemma') else 'custom'}",
        {"model": path.name, "runs": runs, "summary": summary, "target_added_ms": 500},
        smoke=args.smoke,
    )


if __name__ == "__main__":
    main()
