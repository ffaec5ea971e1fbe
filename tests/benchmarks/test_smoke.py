"""Every benchmark runs in its smoke mode (tiny model, tiny sizes) and writes its results.

These keep the benchmark scripts working; they measure nothing. Timing figures come
from full runs (benchmarks/README.md), never from assertions here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"


def run_smoke(module: str, result: str) -> dict[str, Any]:
    path = RESULTS / f"{result}_smoke.json"
    png = path.with_suffix(".png")
    path.unlink(missing_ok=True)
    png.unlink(missing_ok=True)
    done = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{module}", "--smoke", "--plot"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    data: dict[str, Any] = json.loads(path.read_text())
    path.unlink()
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # the plot was drawn
    png.unlink()
    assert data["machine"]["cores"] >= 1
    return data


def test_worker_efficiency() -> None:
    data = run_smoke("worker_efficiency", "worker_efficiency_tiny")
    rows = {r["name"]: r for r in data["rows"]}
    worker = rows["llm-worker-rbee (HTTP SSE)"]
    assert 0 < worker["tokens"] <= data["tokens"] and worker["tokens_per_s"] > 0
    assert data["flatness"]["tokens"] > 100


def test_relay_overhead() -> None:
    data = run_smoke("relay_overhead", "relay_overhead")
    results = data["results"]
    assert {r["target"] for r in results} == {"direct", "queen"}
    assert all(r["errors"] == 0 and r["tokens"] > 0 for r in results), results


def test_cancellation() -> None:
    data = run_smoke("cancellation", "cancellation_tiny")
    assert set(data["results"]) == {
        "decode, disconnect",
        "decode, DELETE",
        "prompt, disconnect",
        "prompt, DELETE",
    }


def test_cold_start() -> None:
    data = run_smoke("cold_start", "cold_start_tiny")
    summary = data["summary"]
    assert 0 < summary["spawn_ms"] < summary["total_ms"]


def test_control_plane() -> None:
    data = run_smoke("control_plane", "control_plane")
    assert [d["workers"] for d in data["decisions"]][:2] == [10, 100]
    assert data["heartbeats"]["failed_requests"] == 0


def test_memory() -> None:
    data = run_smoke("memory", "memory")
    assert data["queen"]["errors"] == 0
    assert data["worker"]["worker_mib"] > data["worker"]["bare_llama_cpp_mib"] > 0
