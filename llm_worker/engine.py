"""llama.cpp through llama-cpp-python's low-level API: the only importer of `llama_cpp`.

Why not `Llama.create_completion(stream=True)`: it detokenizes the whole output again at
every token, so its cost grows with the square of the output length. Here the loop is
ours: sampling runs in llama.cpp's C sampler chain, each token's piece is detokenized once
(:mod:`llm_worker.textstream` keeps split UTF-8 and stop strings right), and the loop checks
a cancel flag between tokens. During prompt processing the abort callback checks the same
flag between graph nodes, so a cancelled long prompt stops within milliseconds.

One :class:`Model` holds the weights; each :class:`Slot` owns one llama.cpp context and
serves one request at a time, in a worker thread (every call here blocks). A slot keeps
the tokens that are in its KV cache and reuses the longest common prefix, so a chat that
grows turn by turn only processes the new turn.
"""

from __future__ import annotations

import ctypes
import logging
import math
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import llama_cpp

from llm_worker.textstream import StopMatcher, Utf8Stream

logger = logging.getLogger(__name__)
llama_logger = logging.getLogger("llama_cpp")

StopReason = Literal["stop", "length", "cancelled"]
FlashAttention = Literal["auto", "on", "off"]
_FLASH_ATTN = {
    "auto": llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO,
    "on": llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED,
    "off": llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED,
}


class EngineError(RuntimeError):
    """llama.cpp refused: the model did not load, a decode failed."""


@dataclass(frozen=True, slots=True)
class GenerationParams:
    prompt_tokens: Sequence[int]
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: off
    seed: int | None = None
    stop: Sequence[str] = ()
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0


@dataclass(frozen=True, slots=True)
class Finished:
    tokens_in: int
    tokens_out: int
    stop_reason: StopReason
    ttft_ms: float
    decode_ms: float


# ---- llama.cpp's log lines go to our logger, not raw to stderr -------------------------

_LOG_LEVELS = {2: logging.DEBUG, 3: logging.WARNING, 4: logging.ERROR}
_log_fragments: list[str] = []
_last_level = logging.DEBUG


def _log_line(level: int, text: bytes, _user_data: ctypes.c_void_p) -> None:
    global _last_level
    if level != 5:  # 5 continues the previous line at its level
        _last_level = _LOG_LEVELS.get(level, logging.DEBUG)
    _log_fragments.append(text.decode("utf-8", errors="replace"))
    if _log_fragments[-1].endswith("\n"):
        line = "".join(_log_fragments).strip()
        _log_fragments.clear()
        if line:
            llama_logger.log(_last_level, "%s", line, extra={"action": "llama_cpp"})


_on_llama_log = llama_cpp.llama_log_callback(_log_line)  # kept referenced for C
_backend_ready = False


def _init_backend() -> None:
    global _backend_ready
    if not _backend_ready:
        llama_cpp.llama_log_set(_on_llama_log, ctypes.c_void_p(0))
        llama_cpp.llama_backend_init()
        _backend_ready = True


def gpu_offload_supported() -> bool:
    return bool(llama_cpp.llama_supports_gpu_offload())


# ---- the model -------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelInfo:
    architecture: str
    n_ctx_train: int
    n_params: int
    size_bytes: int
    chat_template: str | None


class Model:
    """Loaded weights and vocabulary. Thread-safe for tokenization after load."""

    def __init__(self, ptr: Any, path: Path) -> None:
        self._ptr = ptr
        self.path = path
        self.vocab = llama_cpp.llama_model_get_vocab(ptr)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self.info = ModelInfo(
            architecture=self._meta("general.architecture") or "unknown",
            n_ctx_train=llama_cpp.llama_model_n_ctx_train(ptr),
            n_params=llama_cpp.llama_model_n_params(ptr),
            size_bytes=llama_cpp.llama_model_size(ptr),
            chat_template=_decode(llama_cpp.llama_model_chat_template(ptr, None)),
        )

    @classmethod
    def load(
        cls,
        path: Path,
        *,
        gpu_device: int | None = None,
        on_progress: Callable[[float], None] | None = None,
    ) -> Model:
        """Load weights; `gpu_device` offloads every layer to that one GPU."""
        _init_backend()
        params = llama_cpp.llama_model_default_params()
        if gpu_device is None:
            params.n_gpu_layers = 0
        else:
            params.n_gpu_layers = -1
            params.split_mode = llama_cpp.LLAMA_SPLIT_MODE_NONE
            params.main_gpu = gpu_device
        progress_cb = _progress_callback(on_progress)
        params.progress_callback = progress_cb
        ptr = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
        if not ptr:
            raise EngineError(f"llama.cpp could not load the model file {path.name}")
        return cls(ptr, path)

    def _meta(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(256)
        n = llama_cpp.llama_model_meta_val_str(self._ptr, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", errors="replace") if n >= 0 else None

    def tokenize(
        self, text: str, *, add_special: bool = True, parse_special: bool = False
    ) -> list[int]:
        data = text.encode("utf-8", errors="replace")
        capacity = len(data) + 8
        tokens = (llama_cpp.llama_token * capacity)()
        n = llama_cpp.llama_tokenize(
            self.vocab, data, len(data), tokens, capacity, add_special, parse_special
        )
        if n < 0:
            capacity = -n
            tokens = (llama_cpp.llama_token * capacity)()
            n = llama_cpp.llama_tokenize(
                self.vocab, data, len(data), tokens, capacity, add_special, parse_special
            )
        return list(tokens[:n])

    def piece(self, token: int, buf: ctypes.Array[ctypes.c_char]) -> bytes:
        n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, False)
        if n < 0:
            bigger = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self.vocab, token, bigger, -n, 0, False)
            return bigger.raw[:n]
        return buf.raw[:n]

    def is_end_of_generation(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self.vocab, token))

    def apply_chat_template(self, messages: Sequence[tuple[str, str]]) -> str:
        """The prompt for a conversation, ending where the assistant's turn begins.

        Uses the model's own template; files without one get a template picked by
        architecture (Gemma's turn markers for gemma*, ChatML otherwise).
        """
        template = self.info.chat_template
        name = template or ("gemma" if self.info.architecture.startswith("gemma") else "chatml")
        rendered = _apply_builtin_template(name, messages)
        if rendered is None and template:
            rendered = _apply_jinja_template(template, messages, self)
        if rendered is None:
            rendered = _apply_builtin_template("chatml", messages) or ""
        return rendered

    def token_text(self, token: int) -> str:
        buf = ctypes.create_string_buffer(64)
        return self.piece(token, buf).decode("utf-8", errors="replace")

    def close(self) -> None:
        if self._ptr:
            llama_cpp.llama_model_free(self._ptr)
            self._ptr = None

    @property
    def ptr(self) -> Any:
        return self._ptr


def _decode(raw: bytes | None) -> str | None:
    return raw.decode("utf-8", errors="replace") if raw else None


def _progress_callback(on_progress: Callable[[float], None] | None) -> Any:
    def report(progress: float, _data: ctypes.c_void_p) -> bool:
        if on_progress is not None:
            on_progress(float(progress))
        return True

    return llama_cpp.llama_progress_callback(report)


def _apply_builtin_template(name: str, messages: Sequence[tuple[str, str]]) -> str | None:
    chat = (llama_cpp.llama_chat_message * len(messages))()
    keep = [(role.encode(), content.encode()) for role, content in messages]
    for slot, (role, content) in zip(chat, keep, strict=True):
        slot.role, slot.content = role, content
    size = sum(len(r) + len(c) for r, c in keep) * 2 + 256
    for _ in range(2):
        buf = ctypes.create_string_buffer(size)
        n = llama_cpp.llama_chat_apply_template(name.encode(), chat, len(chat), True, buf, size)
        if n < 0:
            return None
        if n <= size:
            return buf.raw[:n].decode("utf-8", errors="replace")
        size = n
    return None


def _apply_jinja_template(
    template: str, messages: Sequence[tuple[str, str]], model: Model
) -> str | None:
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    bos = model.token_text(llama_cpp.llama_vocab_bos(model.vocab))
    eos = model.token_text(llama_cpp.llama_vocab_eos(model.vocab))
    try:
        formatter = Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos)
        chat: Any = [{"role": r, "content": c} for r, c in messages]
        result = formatter(messages=chat)
    except Exception as exc:  # a broken template in a model file is the file's fault
        logger.warning("chat template failed: %s", exc, extra={"action": "chat_template"})
        return None
    prompt = result.prompt
    # The template renders BOS as text; tokenization adds it again, so drop it here.
    return prompt.removeprefix(bos) if bos else prompt


# ---- one context: one request at a time -----------------------------------------------


class Slot:
    """A llama.cpp context with its own KV cache. Not thread-safe: one request at a time."""

    def __init__(
        self,
        model: Model,
        *,
        n_ctx: int,
        n_batch: int,
        n_threads: int,
        embeddings: bool = False,
        flash_attn: FlashAttention = "auto",
    ) -> None:
        self.model = model
        params = llama_cpp.llama_context_default_params()
        # `auto` lets llama.cpp decide (on wherever the backend supports it). On CPU the
        # right answer depends on the model: measured here, Gemma 3 270M decodes 15 %
        # faster with it, a tiny model with small heads 2.7 times slower.
        params.flash_attn_type = _FLASH_ATTN[flash_attn]
        params.n_ctx = n_ctx
        params.n_batch = n_ctx if embeddings else n_batch
        params.n_ubatch = n_ctx if embeddings else n_batch
        params.n_seq_max = 1
        params.n_threads = n_threads
        params.n_threads_batch = n_threads
        params.no_perf = True
        if embeddings:
            params.embeddings = True
            params.pooling_type = llama_cpp.LLAMA_POOLING_TYPE_MEAN
        self._ctx = llama_cpp.llama_init_from_model(model.ptr, params)
        if not self._ctx:
            raise EngineError("llama.cpp could not create a context (out of memory?)")
        self.n_ctx = llama_cpp.llama_n_ctx(self._ctx)
        self.n_batch = params.n_batch
        self._memory = llama_cpp.llama_get_memory(self._ctx)
        self._cached: list[int] = []  # tokens whose keys and values are in the cache
        self._cancel = threading.Event()
        self._abort_cb = llama_cpp.ggml_abort_callback(lambda _data: self._cancel.is_set())
        self._piece_buf = ctypes.create_string_buffer(256)
        self._one = (llama_cpp.llama_token * 1)()

    # -- prompt processing --

    def _reuse_prefix(self, prompt: Sequence[int]) -> int:
        """Drop the cached tokens that differ from `prompt`; return how many are kept."""
        keep = 0
        limit = min(len(self._cached), len(prompt) - 1)  # the last token is always re-run
        while keep < limit and self._cached[keep] == prompt[keep]:
            keep += 1
        if keep < len(self._cached):
            if not llama_cpp.llama_memory_seq_rm(self._memory, 0, keep, -1):
                llama_cpp.llama_memory_clear(self._memory, True)
                keep = 0
            del self._cached[keep:]
        return keep

    def _decode(self, tokens: Sequence[int] | ctypes.Array[ctypes.c_int32]) -> None:
        array = (
            tokens
            if isinstance(tokens, ctypes.Array)
            else (llama_cpp.llama_token * len(tokens))(*tokens)
        )
        rc = llama_cpp.llama_decode(self._ctx, llama_cpp.llama_batch_get_one(array, len(tokens)))
        if rc != 0:
            self._forget()
            if rc == 2:
                raise _Aborted()
            raise EngineError(f"llama_decode failed with status {rc}")
        self._cached.extend(tokens)

    def _process_prompt(self, prompt: Sequence[int]) -> None:
        start = self._reuse_prefix(prompt)
        llama_cpp.llama_set_abort_callback(self._ctx, self._abort_cb, ctypes.c_void_p(0))
        try:
            for i in range(start, len(prompt), self.n_batch):
                if self._cancel.is_set():
                    raise _Aborted()
                self._decode(prompt[i : i + self.n_batch])
        finally:
            # The callback costs a Python call per graph node: only worth it for prompts.
            llama_cpp.llama_set_abort_callback(
                self._ctx, llama_cpp.ggml_abort_callback(0), ctypes.c_void_p(0)
            )

    def _forget(self) -> None:
        llama_cpp.llama_memory_clear(self._memory, True)
        self._cached.clear()

    # -- generation --

    def _sampler(self, params: GenerationParams) -> Any:
        chain_params = llama_cpp.llama_sampler_chain_default_params()
        chain_params.no_perf = True
        chain = llama_cpp.llama_sampler_chain_init(chain_params)
        add = llama_cpp.llama_sampler_chain_add
        if params.presence_penalty or params.frequency_penalty:
            add(
                chain,
                llama_cpp.llama_sampler_init_penalties(
                    self.model.n_vocab, 64, 1.0, params.frequency_penalty, params.presence_penalty
                ),
            )
        if params.temperature <= 0.0:
            add(chain, llama_cpp.llama_sampler_init_greedy())
            return chain
        if params.top_k > 0:  # first: every later step then sees k candidates, not the vocabulary
            add(chain, llama_cpp.llama_sampler_init_top_k(params.top_k))
        if params.top_p < 1.0:
            add(chain, llama_cpp.llama_sampler_init_top_p(params.top_p, 1))
        add(chain, llama_cpp.llama_sampler_init_temp(params.temperature))
        seed = params.seed if params.seed is not None else random.getrandbits(32)
        add(chain, llama_cpp.llama_sampler_init_dist(seed & 0xFFFFFFFF))
        return chain

    def cancel(self) -> None:
        """Thread-safe: the running generation stops at its next check."""
        self._cancel.set()

    def generate(self, params: GenerationParams, emit: Callable[[str], None]) -> Finished:
        """Run one request to its end, calling `emit` with each piece of text."""
        self._cancel.clear()
        started = time.perf_counter()
        first_token_at: float | None = None
        sampler = self._sampler(params)
        decoder, stops = Utf8Stream(), StopMatcher(list(params.stop))
        produced, reason = 0, "length"
        try:
            self._process_prompt(params.prompt_tokens)
            while produced < params.max_tokens:
                if self._cancel.is_set():
                    reason = "cancelled"
                    break
                token = llama_cpp.llama_sampler_sample(sampler, self._ctx, -1)
                if self.model.is_end_of_generation(token):
                    reason = "stop"
                    break
                produced += 1
                first_token_at = first_token_at or time.perf_counter()
                text, stopped = stops.push(decoder.push(self.model.piece(token, self._piece_buf)))
                if text:
                    emit(text)
                if stopped:
                    reason = "stop"
                    break
                if produced < params.max_tokens:
                    self._one[0] = token
                    self._decode(self._one)
        except _Aborted:
            reason = "cancelled"
        finally:
            llama_cpp.llama_sampler_free(sampler)
        if reason != "cancelled" and not stops.stopped:
            tail, _ = stops.push(decoder.flush())
            tail += stops.flush()
            if tail:
                emit(tail)
        ended = time.perf_counter()
        return Finished(
            tokens_in=len(params.prompt_tokens),
            tokens_out=produced,
            stop_reason=reason,  # type: ignore[arg-type]
            ttft_ms=round(((first_token_at or ended) - started) * 1000, 3),
            decode_ms=round((ended - (first_token_at or ended)) * 1000, 3),
        )

    # -- embeddings --

    def embed(self, tokens: Sequence[int]) -> list[float]:
        """Mean-pooled, L2-normalised embedding of one input (embedding slots only)."""
        self._forget()
        self._decode(tokens)
        ptr = llama_cpp.llama_get_embeddings_seq(self._ctx, 0)
        if not ptr:
            raise EngineError("the model produced no pooled embedding")
        n_embd = llama_cpp.llama_model_n_embd(self.model.ptr)
        vector = [float(ptr[i]) for i in range(n_embd)]
        self._forget()
        norm = math.sqrt(sum(v * v for v in vector)) or 1.0
        return [v / norm for v in vector]

    def close(self) -> None:
        if self._ctx:
            llama_cpp.llama_free(self._ctx)
            self._ctx = None


class _Aborted(Exception):
    """Raised inside the generation thread when the cancel flag stopped llama_decode."""
