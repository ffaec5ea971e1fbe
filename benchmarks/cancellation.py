"""Cancellation latency: from the client's disconnect (or DELETE) to the worker's slot
being free again, during decode and during a long prompt's processing. Target <= 250 ms.

    .venv/bin/python -m benchmarks.cancellation --model gemma --runs 5
    .venv/bin/python -m benchmarks.cancellation --smoke
"""

from __future__ import annotations

import argparse
import json
import socket
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx

from benchmarks._common import median, model_path, percentile, print_table, stop, write_results
from benchmarks.worker_efficiency import start_worker

# Made once: a fresh httpx client costs tens of milliseconds here (its TLS context), which
# would be timed as cancellation latency.
CLIENT = httpx.Client(timeout=5)


def slot_free_after(url: str, since: float, timeout: float = 10.0) -> float:
    """Seconds from `since` until /v1/ready reports no busy slot (polled every ~1 ms)."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if CLIENT.get(url + "/v1/ready").json()["slots_busy"] == 0:
            return time.perf_counter() - since
        time.sleep(0.001)
    raise TimeoutError("slot never freed")


def _raw_request(url: str, body: bytes, headers: dict[str, str]) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    sock.sendall(
        f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
        f"\r\n{extra}Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    return sock


def during_decode(url: str, how: str) -> float:
    job = uuid.uuid4().hex
    body = b'{"model":"m","prompt":"Tell a long story","max_tokens":3000,"stream":true}'
    sock = _raw_request(url, body, {"X-Rbee-Job-Id": job})
    sock.recv(4096)  # headers and the first tokens: decoding is under way
    time.sleep(0.05)
    return _cancel(url, sock, job, how)


def during_prompt(url: str, how: str, prompt_words: int) -> float:
    job = uuid.uuid4().hex
    prompt = "word " * prompt_words
    body = json.dumps({"model": "m", "prompt": prompt, "max_tokens": 1, "stream": True}).encode()
    sock = _raw_request(url, body, {"X-Rbee-Job-Id": job})
    while CLIENT.get(url + "/v1/ready").json()["slots_busy"] == 0:  # the job holds the slot
        time.sleep(0.001)
    time.sleep(0.02)
    return _cancel(url, sock, job, how)


def _cancel(url: str, sock: socket.socket, job: str, how: str) -> float:
    """Stop the job by closing its connection or by DELETE; seconds until its slot is free."""
    started = time.perf_counter()
    if how == "disconnect":
        sock.close()
    else:
        CLIENT.delete(f"{url}/v1/inference/{job}")
    elapsed = slot_free_after(url, started)
    sock.close()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="gemma")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--prompt-words", type=int, default=1500)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--plot", action="store_true", help="also draw a PNG (matplotlib)")
    args = parser.parse_args()
    if args.smoke:
        args.model, args.runs, args.prompt_words = "tiny", 1, 3000
    path = model_path(args.model)
    worker, url = start_worker(path, threads=2, n_ctx=4096)
    rows: list[list[Any]] = []
    results: dict[str, dict[str, float]] = {}
    cases: dict[str, Callable[[str], float]] = {
        "decode, disconnect": lambda u: during_decode(u, "disconnect"),
        "decode, DELETE": lambda u: during_decode(u, "delete"),
        "prompt, disconnect": lambda u: during_prompt(u, "disconnect", args.prompt_words),
        "prompt, DELETE": lambda u: during_prompt(u, "delete", args.prompt_words),
    }
    try:
        for name, case in cases.items():
            times_ms = [case(url) * 1000 for _ in range(args.runs)]
            results[name] = {"p50_ms": median(times_ms), "max_ms": max(times_ms)}
            rows.append([name, median(times_ms), percentile(times_ms, 99), max(times_ms)])
    finally:
        stop(worker)
    print_table(
        f"cancellation to free slot, {path.name}, {args.runs} runs",
        ["case", "p50 ms", "p99 ms", "max ms"],
        rows,
    )
    write_results(
        f"cancellation_{args.model if args.model in ('tiny', 'gemma') else 'custom'}",
        {
            "model": path.name,
            "runs": args.runs,
            "prompt_words": args.prompt_words,
            "target_ms": 250,
            "results": results,
        },
        smoke=args.smoke,
        plot=args.plot,
    )


if __name__ == "__main__":
    main()
