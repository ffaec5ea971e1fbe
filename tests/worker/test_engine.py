"""The real llama.cpp engine on the tiny model, in-process."""

from __future__ import annotations

import itertools
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

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


class _TimeInsideLlama:
    """Wraps llama.cpp's decode and sampling calls and adds up the time spent inside them."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import llama_cpp

        self.total = 0.0
        for name in ("llama_decode", "llama_sampler_sample"):
            monkeypatch.setattr(llama_cpp, name, self._timed(getattr(llama_cpp, name)))

    def _timed(self, call: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any) -> Any:
            started = time.perf_counter()
            try:
                return call(*args)
            finally:
                self.total += time.perf_counter() - started

        return timed


def _own_time_per_token(
    slot: Slot, params: GenerationParams, inside: _TimeInsideLlama
) -> list[float]:
    """Per token: wall time between two emitted pieces minus the time spent in llama.cpp."""
    stamps: list[tuple[float, float]] = []
    slot.generate(params, lambda _: stamps.append((time.perf_counter(), inside.total)))
    return [(t1 - t0) - (in1 - in0) for (t0, in0), (t1, in1) in itertools.pairwise(stamps)]


def test_per_token_cost_stays_flat_over_2000_tokens(
    model: Model, slot: Slot, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loop's own work per token must not grow with the output (the O(n^2)
    detokenization of create_completion would). llama.cpp's attention does grow with the
    position, so its own time is taken out: what is left is sampling glue,
    detokenization, stop matching and the hand-off, which must stay flat."""
    inside = _TimeInsideLlama(monkeypatch)
    params = GenerationParams(model.tokenize("Once upon a time"), 2000, temperature=0.8, seed=3)
    # The best of three runs per window: another process on the machine can only ever
    # add time, so the minimum is the loop's own cost.
    runs = [_own_time_per_token(slot, params, inside) for _ in range(3)]
    assert all(len(run) >= 1900 for run in runs)

    def best_median(window: slice) -> float:
        return min(statistics.median(run[window]) for run in runs)

    first, last = best_median(slice(0, 100)), best_median(slice(-100, None))
    # At token 1,900 no more than at token 0, give or take scheduling noise (50 us).
    assert last < first + 50e-6, (first, last)


def test_chat_template_falls_back_to_chatml(model: Model) -> None:
    prompt = model.apply_chat_template([("system", "Be brief."), ("user", "Hi")])
    assert prompt.endswith("<|im_start|>assistant\n")
    assert "<|im_start|>system\nBe brief.<|im_end|>" in prompt


def test_top_k_one_is_greedy(model: Model, slot: Slot) -> None:
    """top_k 1 leaves one candidate: any temperature and seed give the greedy text."""
    prompt = model.tokenize("Top k")
    greedy: list[str] = []
    slot.generate(GenerationParams(prompt, 30, temperature=0.0), greedy.append)
    for seed in (1, 2):
        pieces: list[str] = []
        params = GenerationParams(prompt, 30, temperature=1.5, top_k=1, seed=seed)
        slot.generate(params, pieces.append)
        assert "".join(pieces) == "".join(greedy)
