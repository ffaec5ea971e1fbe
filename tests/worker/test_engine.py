"""The real llama.cpp engine on the tiny model, in-process."""

from __future__ import annotations

import itertools
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from llm_worker.engine import GenerationParams, Model, Slot


@pytest.fixture(scope="module")
def model(tiny_model: Path) -> Iterator[Model]:
    loaded = Model.load(tiny_model)
    yield loaded
    loaded.close()


@pytest.fixture
def slot(model: Model) -> Iterator[Slot]:
    s = Slot(model, n_ctx=4096, n_batch=4096, n_threads=2)
    yield s
    s.close()


def test_stop_reasons_and_token_counts(model: Model, slot: Slot) -> None:
    pieces: list[str] = []
    prompt = model.tokenize("Hello world")
    done = slot.generate(GenerationParams(prompt, 50, temperature=0.8, seed=7), pieces.append)
    assert (done.stop_reason, done.tokens_out, done.tokens_in) == ("length", 50, len(prompt))
    text = "".join(pieces)
    stop = text[10:14]
    again: list[str] = []
    done = slot.generate(
        GenerationParams(prompt, 50, temperature=0.8, seed=7, stop=[stop]), again.append
    )
    assert done.stop_reason == "stop"
    assert "".join(again) == text[: text.index(stop)]


def test_same_seed_same_text_even_with_a_reused_cache(model: Model, slot: Slot) -> None:
    prompt = model.tokenize("The same prompt twice")
    runs = []
    for _ in range(2):
        pieces: list[str] = []
        slot.generate(GenerationParams(prompt, 40, temperature=0.7, seed=42), pieces.append)
        runs.append("".join(pieces))
    assert runs[0] == runs[1]


def test_cancel_stops_prompt_processing_inside_llama_decode(model: Model, slot: Slot) -> None:
    # One 4,000-token batch: no token boundary to check at, only the abort callback.
    prompt = model.tokenize("word " * 3990)[:4000]
    timer = threading.Timer(0.01, slot.cancel)
    started = time.perf_counter()
    timer.start()
    done = slot.generate(GenerationParams(prompt, 10), lambda _: None)
    elapsed = time.perf_counter() - started
    timer.cancel()
    full = time.perf_counter()
    slot.generate(GenerationParams(prompt, 1), lambda _: None)
    full_elapsed = time.perf_counter() - full
    assert done.stop_reason == "cancelled" and done.tokens_out == 0
    assert elapsed < full_elapsed, (elapsed, full_elapsed)


def _per_token_times(generate: object, n: int) -> list[float]:
    stamps: list[float] = []

    def emit(_: str) -> None:
        stamps.append(time.perf_counter())

    generate(emit)  # type: ignore[operator]
    return [b - a for a, b in itertools.pairwise(stamps)][: n - 1]


def test_per_token_cost_stays_flat_over_2000_tokens(model: Model, slot: Slot) -> None:
    """The loop's own work per token must not grow with the output (the O(n^2)
    detokenization of create_completion would). llama.cpp's attention does grow with the
    position, so the growth is compared with the bare decode loop at the same positions."""
    prompt = model.tokenize("Once upon a time")
    params = GenerationParams(prompt, 2000, temperature=0.8, seed=3)
    ours = _per_token_times(lambda emit: slot.generate(params, emit), 2000)
    bare = bare_decode_times(model, prompt, 2000)
    assert len(ours) >= 1900

    def median(times: list[float]) -> float:
        return statistics.median(times)

    overhead_first = median(ours[:100]) - median(bare[:100])
    overhead_last = median(ours[-100:]) - median(bare[-100:])
    # Our own cost per token (on top of llama.cpp) at token 1,900 is no larger than at
    # token 0, give or take scheduling noise (50 us).
    assert overhead_last < max(overhead_first, 0.0) + 50e-6, (overhead_first, overhead_last)


def bare_decode_times(model: Model, prompt: list[int], n: int) -> list[float]:
    """llama_decode + C sampling and nothing else: the reference for the engine's loop."""
    import llama_cpp

    bare = Slot(model, n_ctx=4096, n_batch=512, n_threads=2)
    try:
        sampler = bare._sampler(GenerationParams(prompt, n, temperature=0.8, seed=3))
        bare._process_prompt(prompt)
        one = (llama_cpp.llama_token * 1)()
        stamps = []
        for _ in range(n):
            one[0] = llama_cpp.llama_sampler_sample(sampler, bare._ctx, -1)
            llama_cpp.llama_decode(bare._ctx, llama_cpp.llama_batch_get_one(one, 1))
            stamps.append(time.perf_counter())
        llama_cpp.llama_sampler_free(sampler)
    finally:
        bare.close()
    return [b - a for a, b in itertools.pairwise(stamps)]


def test_chat_template_falls_back_to_chatml(model: Model) -> None:
    prompt = model.apply_chat_template([("system", "Be brief."), ("user", "Hi")])
    assert prompt.endswith("<|im_start|>assistant\n")
    assert "<|im_start|>system\nBe brief.<|im_end|>" in prompt
