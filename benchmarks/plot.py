"""PNG plots of benchmark results, drawn from their JSON files (needs matplotlib: the
`plots` extra). Every benchmark script takes `--plot` to draw its own after a run.

    .venv/bin/python -m benchmarks.plot                      # every results/*.json
    .venv/bin/python -m benchmarks.plot results/memory.json  # one
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks._common import RESULTS

Draw = Callable[[Any, dict[str, Any]], None]


def _bars(ax: Any, labels: list[str], values: list[float], unit: str) -> None:
    ax.barh(labels, values, color="#4c72b0")
    for y, value in enumerate(values):
        ax.text(value, y, f" {value:,.1f}", va="center", fontsize=8)
    ax.set_xlabel(unit)
    ax.invert_yaxis()


def worker_efficiency(ax: Any, data: dict[str, Any]) -> None:
    rows = data["rows"]
    _bars(ax, [r["name"] for r in rows], [r["tokens_per_s"] for r in rows], "tokens/s")
    ax.set_title(f"{data['model']}: {data['tokens']} tokens, {data['threads']} threads")


def relay_overhead(ax: Any, data: dict[str, Any]) -> None:
    for target, style in (("direct", "o-"), ("queen", "s-")):
        rows = [r for r in data["results"] if r["target"] == target]
        levels = [r["concurrency"] for r in rows]
        ax.plot(levels, [r["ttfb_p50_ms"] for r in rows], style, label=f"{target} p50")
        ax.plot(levels, [r["ttfb_p99_ms"] for r in rows], style, alpha=0.4, label=f"{target} p99")
    ax.set(xscale="log", yscale="log", xlabel="concurrent streams", ylabel="TTFB ms")
    ax.set_title("time to first byte, direct and through the queen")
    ax.legend(fontsize=8)


def cancellation(ax: Any, data: dict[str, Any]) -> None:
    cases = list(data["results"])
    _bars(ax, cases, [data["results"][c]["p50_ms"] for c in cases], "ms to a free slot (p50)")
    ax.axvline(data["target_ms"], color="red", linestyle="--", label="target")
    ax.set_title(f"cancellation, {data['model']}")
    ax.legend(fontsize=8)


def cold_start(ax: Any, data: dict[str, Any]) -> None:
    s = data["summary"]
    left = 0.0
    for part in ("spawn_ms", "load_ms", "first_token_ms"):
        ax.barh(["at the hive"], [s[part]], left=left, label=part.removesuffix("_ms"))
        left += s[part]
    ax.barh(["through the queen"], [s["queen_total_ms"]], color="#55a868", label="total")
    ax.axvline(s["bare_load_ms"], color="black", linestyle=":", label="bare load")
    ax.set_xlabel("ms")
    ax.set_title(f"cold start, {data['model']}")
    ax.legend(fontsize=8)


def control_plane(ax: Any, data: dict[str, Any]) -> None:
    rows = [d for d in data["decisions"] if d["models"] > 1 or d["workers"] <= 10]
    workers = [d["workers"] for d in rows]
    ax.plot(workers, [d["p50_us"] for d in rows], "o-", label="p50")
    ax.plot(workers, [d["p99_us"] for d in rows], "s-", label="p99")
    ax.axhline(100, color="red", linestyle="--", label="target")
    ax.set(xscale="log", xlabel="registered workers", ylabel="decision us")
    beats = data["heartbeats"]
    ax.set_title(
        f"scheduler decisions; {beats['hives']} hives' heartbeats: "
        f"{beats['core_share_pct']:.0f} % of a core"
    )
    ax.legend(fontsize=8)


def memory(ax: Any, data: dict[str, Any]) -> None:
    labels = ["queen", "queen, open streams", "hive", "hive + worker", "bare llama.cpp", "worker"]
    values = [
        data["queen"]["rest_mib"],
        data["queen"]["open_mib"],
        data["hive"]["idle_mib"],
        data["hive"]["with_one_worker_mib"],
        data["worker"]["bare_llama_cpp_mib"],
        data["worker"]["worker_mib"],
    ]
    _bars(ax, labels, values, "MiB resident")
    ax.set_title("resident memory")


DRAWERS: dict[str, Draw] = {
    "worker_efficiency": worker_efficiency,
    "relay_overhead": relay_overhead,
    "cancellation": cancellation,
    "cold_start": cold_start,
    "control_plane": control_plane,
    "memory": memory,
}


def plot(path: Path) -> Path:
    """Draw `path` (a results JSON file) into a PNG beside it; returns the PNG's path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = json.loads(path.read_text())
    name = data["benchmark"]
    draw = next(d for prefix, d in DRAWERS.items() if name.startswith(prefix))
    fig, ax = plt.subplots(figsize=(8, 4.5))
    try:
        draw(ax, data)
        ax.annotate(
            f"measured {data['measured_at']}",
            xy=(1, 0),
            xycoords="figure fraction",
            ha="right",
            va="bottom",
            fontsize=7,
        )
        fig.tight_layout()
        out = path.with_suffix(".png")
        fig.savefig(out, dpi=110)
    finally:
        plt.close(fig)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=Path)
    args = parser.parse_args()
    for path in args.files or sorted(RESULTS.glob("*.json")):
        print(f"wrote {plot(path)}")


if __name__ == "__main__":
    main()
