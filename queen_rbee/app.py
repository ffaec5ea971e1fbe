"""The queen's ASGI app: `create_app(settings)` wires resources, routes and policy.

Lifespan: open the registry (SQLite), the upstream session (aiohttp, the token path) and
the control client (httpx, to hives); build the dispatcher and the inference service; on
exit stop the hives this queen started over SSH, then close everything. SIGTERM first
calls `on_stop_signal`, which makes new inference answer 503 `SHUTTING_DOWN` while
uvicorn lets running streams finish within the drain budget.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from queen_rbee.control import Control
from queen_rbee.deps import Queen
from queen_rbee.dispatcher import Dispatcher
from queen_rbee.hostctl import HiveHosts
from queen_rbee.inference import Inference
from queen_rbee.jobs import Jobs
from queen_rbee.metrics import QueenMetrics, StateCollector
from queen_rbee.poller import HivePoller
from queen_rbee.registry import Registry
from queen_rbee.relay import Upstream
from queen_rbee.routes import hives, models, openai, system, tasks, workers
from queen_rbee.settings import QueenSettings
from shared.auth import Audience, Role, rule
from shared.service.app_base import build_app

logger = logging.getLogger(__name__)

RULES = [
    rule("GET", "/v1/models", Role.CLIENT),
    rule("POST", "/v1/chat/completions", Role.CLIENT),
    rule("POST", "/v1/completions", Role.CLIENT),
    rule("POST", "/v1/embeddings", Role.CLIENT),
    rule("POST", "/v2/tasks", Role.CLIENT),
    rule("DELETE", "/v2/tasks/[^/]+", Role.CLIENT),
    rule("PUT", "/v2/hives/[^/]+", Role.HIVE),
    rule("POST", "/v2/hives/[^/]+/heartbeat", Role.HIVE),
]


def create_app(settings: QueenSettings | None = None) -> FastAPI:
    settings = settings or QueenSettings.load()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        registry = Registry(
            settings.data_dir / "queen.db",
            settings.hive_stale_after_s,
            settings.hive_offline_after_s,
        )
        await registry.open()
        control = Control(app.state.authenticator)
        upstream = Upstream(settings.max_connections)
        await upstream.open()
        dispatcher = Dispatcher(
            registry,
            control,
            queue_size=settings.queue_size,
            max_workers_per_model=settings.max_workers_per_model,
            cold_start_timeout_s=settings.cold_start_timeout_s,
            quarantine_s=settings.quarantine_s,
        )
        metrics = QueenMetrics(app.state.registry)
        collector = StateCollector(registry, dispatcher)
        app.state.registry.register(collector)
        jobs = Jobs()
        inference = Inference(settings, dispatcher, upstream, control, jobs, metrics)
        hosts = HiveHosts(settings, registry, control)
        poller = HivePoller(registry, control, max(0.5, settings.hive_stale_after_s / 3))
        poller.start()
        ssh_start = asyncio.create_task(hosts.start_known())
        app.state.queen = Queen(
            settings, registry, control, upstream, dispatcher, jobs, metrics, inference, hosts
        )

        def stop_taking_work() -> None:
            dispatcher.draining = True
            logger.info("draining: new inference is refused", extra={"action": "drain"})

        app.state.on_stop_signal = stop_taking_work
        logger.info("queen ready on %s", settings.own_url, extra={"action": "start"})
        try:
            yield
        finally:
            dispatcher.draining = True
            await poller.stop()
            ssh_start.cancel()
            await asyncio.gather(ssh_start, return_exceptions=True)
            await hosts.stop_started()
            await dispatcher.aclose()
            await upstream.aclose()
            await control.aclose()
            app.state.registry.unregister(collector)
            await registry.close()
            logger.info("queen stopped", extra={"action": "stop"})

    return build_app(
        settings=settings,
        title="queen-rbee",
        audience=Audience.QUEEN,
        rules=RULES,
        lifespan=lifespan,
        routers=[  # busiest first: inference, then heartbeats
            openai.router,
            hives.router,
            tasks.router,
            workers.router,
            models.router,
            system.router,
        ],
    )
