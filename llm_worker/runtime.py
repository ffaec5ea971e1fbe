"""The worker's state: its model, its slots, its jobs, and whether it takes work.

Everything here is touched from the event loop only; the generation threads see nothing
but their own :class:`Slot`. A slot goes back to the free list only when its thread has
really finished (not when the request handler gave up), so a cancelled generation can
never overlap the next one on the same context.

The embedding context is created at load with `--embeddings`, otherwise by the first
`/v1/embeddings` request (as Ollama serves embeddings from any loaded model). It is one
future owned by the loop: the first request starts the creation in a pool thread, every
other request awaits the same future (shielded, so a client that leaves cannot lose the
context), and embedding calls run one at a time under `_embed_lock`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

from llm_worker.channel import Channel
from llm_worker.engine import EngineError, Finished, GenerationParams, Model, Slot
from llm_worker.preload import Preload, embedding_slot
from llm_worker.settings import WorkerSettings
from shared.errors import (
    AllSlotsBusy,
    ContextLengthExceeded,
    DeadlineExceeded,
    ShuttingDown,
    ValidationError,
    WorkerFailed,
    WorkerLoading,
)

logger = logging.getLogger(__name__)

State = Literal["loading", "ready", "draining", "failed"]


@dataclass
class Job:
    job_id: str
    slot: Slot
    started: float


class WorkerRuntime:
    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.state: State = "loading"
        self._preload: Preload | None = None
        self.model: Model | None = None
        self._free: list[Slot] = []
        self._all: list[Slot] = []
        self._embedder: asyncio.Future[Slot] | None = None
        self._embed_lock = asyncio.Lock()
        self._threads = 1
        self.jobs: dict[str, Job] = {}
        self.executor = ThreadPoolExecutor(
            max_workers=settings.slots + 1, thread_name_prefix="llama"
        )
        self.n_ctx = 0
        self.last_activity = time.monotonic()
        # Called from generation threads with each result (metrics are thread-safe).
        self.on_finished: list[Callable[[Finished], None]] = []

    # -- loading --

    async def load(self, preload: Preload | None = None) -> None:
        """Load the model, or take over the load that `preload` started at process start."""
        if preload is None:
            preload = Preload(self.settings, self.executor)
        self._preload = preload
        loaded = await asyncio.wrap_future(preload.future)
        self.model, self._all, self._free = loaded.model, loaded.slots, list(loaded.slots)
        self.n_ctx, self._threads = loaded.n_ctx, loaded.threads
        if loaded.embedder is not None:
            self._embedder = asyncio.get_running_loop().create_future()
            self._embedder.set_result(loaded.embedder)
        self.state = "ready"

    @property
    def progress(self) -> float:
        if self.state == "ready":
            return 1.0
        return self._preload.progress if self._preload is not None else 0.0

    # -- admission --

    @property
    def slots_total(self) -> int:
        return self.settings.slots

    @property
    def slots_busy(self) -> int:
        return len(self._all) - len(self._free) if self._all else 0

    def check_accepting(self) -> Model:
        if self.state == "loading":
            raise WorkerLoading(retry_after=1)
        if self.state != "ready" or self.model is None:
            raise ShuttingDown("The worker is draining and takes no new work.")
        return self.model

    def check_fits(self, prompt_tokens: int, max_tokens: int | None) -> int:
        """The max_tokens to use; refuses prompts that do not fit the context."""
        room = self.n_ctx - prompt_tokens
        wanted = max_tokens if max_tokens is not None else room
        if room < 1 or wanted > room:
            raise ContextLengthExceeded(
                f"The prompt ({prompt_tokens} tokens) plus max_tokens ({wanted}) exceeds the "
                f"context length of {self.n_ctx} tokens.",
                param="max_tokens" if room >= 1 else "prompt",
            )
        return wanted

    def acquire(self, job_id: str) -> Job:
        self.check_accepting()
        if job_id in self.jobs:
            raise ValidationError(f"Job '{job_id}' is already running.", param="job_id")
        if not self._free:
            raise AllSlotsBusy(
                details={"slots_total": self.slots_total, "slots_busy": self.slots_busy},
                retry_after=1,
            )
        job = Job(job_id, self._free.pop(), time.monotonic())
        self.jobs[job_id] = job
        self.last_activity = time.monotonic()
        return job

    def release(self, job: Job) -> None:
        if self.jobs.get(job.job_id) is job:
            del self.jobs[job.job_id]
        self._free.append(job.slot)
        self.last_activity = time.monotonic()

    def cancel(self, job_id: str) -> bool:
        job = self.jobs.get(job_id)
        if job is None:
            return False
        job.slot.cancel()
        return True

    # -- generation --

    def generate(
        self, job: Job, params: GenerationParams, deadline: float | None = None
    ) -> Generation:
        """Start generating now; the slot is released when the thread has returned."""
        return Generation(self, job, params, deadline)

    async def embed(self, texts: Sequence[str]) -> tuple[list[list[float]], int]:
        model = self.check_accepting()
        token_lists = [model.tokenize(t) for t in texts]
        for tokens in token_lists:
            if len(tokens) > self.n_ctx:
                raise ContextLengthExceeded(
                    f"An input of {len(tokens)} tokens exceeds the context of {self.n_ctx}.",
                    param="input",
                )
        loop = asyncio.get_running_loop()
        try:
            embedder = await asyncio.shield(self._embedding_slot(model))
            async with self._embed_lock:
                vectors = [
                    await loop.run_in_executor(self.executor, embedder.embed, tokens)
                    for tokens in token_lists
                ]
        except EngineError as exc:
            raise WorkerFailed(f"Embedding failed: {exc}.") from exc
        return vectors, sum(len(t) for t in token_lists)

    def _embedding_slot(self, model: Model) -> asyncio.Future[Slot]:
        """The embedding context's future; the first caller starts its creation."""
        if self._embedder is None:
            future = asyncio.get_running_loop().run_in_executor(
                self.executor, embedding_slot, model, self.n_ctx, self._threads
            )
            future.add_done_callback(self._embedder_created)
            self._embedder = future
        return self._embedder

    def _embedder_created(self, future: asyncio.Future[Slot]) -> None:
        if future.cancelled() or future.exception() is not None:
            if self._embedder is future:
                self._embedder = None  # the next request tries again
            return
        logger.info(
            "embedding context created on first use",
            extra={"action": "embeddings_ready", "worker_id": self.settings.worker_id},
        )

    # -- stopping --

    def drain(self) -> None:
        if self.state in ("ready", "loading"):
            self.state = "draining"

    async def close(self) -> None:
        for job in list(self.jobs.values()):
            job.slot.cancel()
        # Waiting for the threads blocks, so it happens off the loop.
        await asyncio.to_thread(self.executor.shutdown, True, cancel_futures=True)
        for slot in self._all:
            slot.close()
        embedder = self._embedder
        if embedder is not None and embedder.done() and not embedder.cancelled():
            if embedder.exception() is None:
                embedder.result().close()
        if self.model is not None:
            self.model.close()


class Generation:
    """One running generation: `batches()` gives its text pieces, then one :class:`Finished`.

    The thread starts at construction, so the slot's release never depends on whether
    anybody iterates. `cancel()` (idempotent) stops the thread at its next check; it is
    called when the consumer stops early, disconnects or passes the deadline (loop time).
    """

    def __init__(
        self, runtime: WorkerRuntime, job: Job, params: GenerationParams, deadline: float | None
    ) -> None:
        self.job = job
        self._deadline = deadline
        self._observers = runtime.on_finished
        loop = asyncio.get_running_loop()
        self._channel: Channel[str | Finished | BaseException] = Channel(loop)
        future = loop.run_in_executor(runtime.executor, self._run, params)
        future.add_done_callback(lambda _: runtime.release(job))

    def _run(self, params: GenerationParams) -> None:
        try:
            finished = self.job.slot.generate(params, self._channel.put)
            self._channel.put(finished)
            for observe in self._observers:
                observe(finished)
        except BaseException as exc:  # handed to the loop, raised there
            self._channel.put(exc)

    def cancel(self) -> None:
        self.job.slot.cancel()

    async def batches(self) -> AsyncIterator[list[str | Finished]]:
        """Everything produced since the last batch: one wake-up and one write to the
        client for all the tokens the thread made while the loop was busy. The last
        batch ends with the :class:`Finished`."""
        try:
            async with asyncio.timeout_at(self._deadline):
                while True:
                    batch: list[str | Finished] = []
                    for item in await self._channel.take_all():
                        if isinstance(item, BaseException):
                            if batch:
                                yield batch
                            raise WorkerFailed(f"Generation failed: {item}") from item
                        batch.append(item)
                        if isinstance(item, Finished):
                            yield batch
                            return
                    yield batch
        except TimeoutError:
            raise DeadlineExceeded() from None
        finally:
            self.cancel()  # a no-op when the thread has already finished
