"""`create_app(settings)`: the hive's FastAPI app (SPEC section 5, hive).

Nothing is built at import time; `uvicorn rbee_hive.app:create_app --factory` reads the
settings from the environment. The lifespan owns every long-lived resource (see
:mod:`rbee_hive.hive`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from rbee_hive.hive import Hive
from rbee_hive.metrics import HiveCollector
from rbee_hive.routes import models, system, workers
from rbee_hive.settings import HiveSettings
from shared.auth import Audience, Authenticator, Role, rule
from shared.service.app_base import build_app

RULES = [rule("POST", "/v1/workers/ready", Role.WORKER)]


def create_app(settings: HiveSettings | None = None) -> FastAPI:
    settings = settings or HiveSettings.load()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        authenticator: Authenticator = app.state.authenticator
        hive = await Hive.start(settings, lambda: authenticator.credentials)
        app.state.hive = hive
        registry: CollectorRegistry = app.state.registry
        collector = HiveCollector(hive)
        registry.register(collector)
        app.state.on_stop_signal = hive.begin_shutdown
        try:
            yield
        except asyncio.CancelledError:
            hive.pool.kill_all()  # forced exit (second signal): leave no worker behind
            raise
        try:
            await hive.close()
        except asyncio.CancelledError:
            hive.pool.kill_all()
            raise

    return build_app(
        settings=settings,
        title="rbee-hive",
        audience=Audience.HIVE,
        rules=RULES,
        lifespan=lifespan,
        routers=[system.router, models.router, workers.router],
    )
