"""The worker's FastAPI app: built by `create_app(settings)`, nothing at import time."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

from fastapi import FastAPI

from llm_worker.lifecycle import load_model, send_ready_callback, watch_for_orphaning
from llm_worker.metrics import WorkerMetrics
from llm_worker.preload import Preload
from llm_worker.routes import control, inference
from llm_worker.runtime import WorkerRuntime
from llm_worker.settings import WorkerSettings
from shared.auth import Audience, Role, rule
from shared.service.app_base import build_app

ACCESS_RULES = [rule("GET", "/v1/ready", Role.HIVE)]


def create_app(settings: WorkerSettings | None = None, preload: Preload | None = None) -> FastAPI:
    """The worker app; `preload` is a model load that `__main__` already started."""
    settings = settings or WorkerSettings.load()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = WorkerRuntime(settings)
        app.state.runtime = runtime
        app.state.metrics = WorkerMetrics(app.state.registry, runtime)
        runtime.on_finished.append(app.state.metrics.observe)
        app.state.on_stop_signal = runtime.drain
        stop = _stopper(app)
        tasks = [
            asyncio.create_task(_start(app, runtime, stop, preload)),
            asyncio.create_task(watch_for_orphaning(runtime, stop)),
        ]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await runtime.close()

    return build_app(
        settings=settings,
        title="llm-worker-rbee",
        audience=Audience.WORKER,
        rules=ACCESS_RULES,
        lifespan=lifespan,
        routers=[control.router, inference.router],
    )


def _stopper(app: FastAPI) -> Callable[[], None]:
    def stop() -> None:
        request_exit = getattr(app.state, "request_exit", None)
        if request_exit is not None:
            request_exit()

    return stop


async def _start(
    app: FastAPI, runtime: WorkerRuntime, stop: Callable[[], None], preload: Preload | None
) -> None:
    def failed() -> None:
        app.state.exit_code = 1
        stop()

    if await load_model(runtime, failed, preload):
        await send_ready_callback(runtime, app.state.authenticator.credentials)
