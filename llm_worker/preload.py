"""Loading the model in a thread that starts before the web stack is imported.

A worker's cold start is Python imports (FastAPI, uvicorn, pydantic: about half a
second) followed by the model load. llama.cpp loads weights in C with the GIL released,
so `__main__` starts this load first and imports the rest meanwhile; the app's lifespan
then waits on the same future. This module imports only the standard library until the
thread runs, so starting it costs nothing.
"""

from __future__ import annotations

import concurrent.futures
import os
import sys
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from llm_worker.settings import WorkerSettings

if TYPE_CHECKING:
    from llm_worker.engine import Model, Slot

MAX_CONTEXT_DEFAULT = 4096
PRELOAD_SWITCH_INTERVAL_S = 0.0002


@dataclass(frozen=True)
class Loaded:
    model: Model
    slots: list[Slot]
    embedder: Slot | None
    n_ctx: int
    threads: int


class Preload:
    def __init__(
        self, settings: WorkerSettings, executor: concurrent.futures.Executor | None = None
    ) -> None:
        self.settings = settings
        self.progress = 0.0  # a float store from the loading thread: safe to read anywhere
        self._interval = sys.getswitchinterval()
        if executor is None:
            self.future: concurrent.futures.Future[Loaded] = concurrent.futures.Future()
            # llama.cpp calls back into Python (log lines, progress) hundreds of times
            # while loading; each call waits for the GIL, which the importing main thread
            # holds for up to the switch interval (5 ms). Hand it over more often meanwhile.
            sys.setswitchinterval(PRELOAD_SWITCH_INTERVAL_S)
            self.future.add_done_callback(lambda _: sys.setswitchinterval(self._interval))
            threading.Thread(target=self._run_into_future, name="preload", daemon=True).start()
        else:
            self.future = executor.submit(self._load)

    def _run_into_future(self) -> None:
        try:
            self.future.set_result(self._load())
        except BaseException as exc:  # delivered to whoever awaits the future
            self.future.set_exception(exc)

    def _on_progress(self, progress: float) -> None:
        self.progress = progress

    def _load(self) -> Loaded:
        from llm_worker.engine import EngineError, Model, Slot, gpu_offload_supported
        from shared.errors import BackendUnavailable

        s = self.settings
        if not s.model.is_file():
            raise EngineError(f"model file {s.model} does not exist")
        if s.backend != "cpu" and not gpu_offload_supported():
            raise BackendUnavailable(
                f"Backend '{s.backend}' is not available: this llama-cpp-python build "
                "has no GPU offload."
            )
        gpu = None if s.backend == "cpu" else s.device
        model = Model.load(s.model, gpu_device=gpu, on_progress=self._on_progress)
        n_ctx = s.n_ctx or min(model.info.n_ctx_train, MAX_CONTEXT_DEFAULT)
        threads = self._threads()
        slots = [
            Slot(model, n_ctx=n_ctx, n_batch=s.n_batch, n_threads=threads, flash_attn=s.flash_attn)
            for _ in range(s.slots)
        ]
        embedder = embedding_slot(model, n_ctx, threads) if s.embeddings else None
        return Loaded(model, slots, embedder, slots[0].n_ctx, threads)

    def _threads(self) -> int:
        if self.settings.threads:
            return self.settings.threads
        import psutil

        return psutil.cpu_count(logical=False) or os.cpu_count() or 1


def embedding_slot(model: Model, n_ctx: int, threads: int) -> Slot:
    """A context for `/v1/embeddings` (blocking: call it in a thread)."""
    from llm_worker.engine import Slot

    return Slot(model, n_ctx=n_ctx, n_batch=n_ctx, n_threads=threads, embeddings=True)
