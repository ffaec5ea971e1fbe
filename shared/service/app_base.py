"""The frame every service app is built in: middleware order, errors, auth, metrics.

Order, outermost first: correlation id (so every response, refusals included, carries
it) -> request metrics -> unexpected errors -> body limit -> authentication -> the app.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from fastapi import APIRouter, FastAPI
from prometheus_client import CollectorRegistry

from shared import __version__
from shared.auth import (
    AccessPolicy,
    Audience,
    Authenticator,
    AuthMiddleware,
    CredentialError,
    Rule,
    is_loopback,
)
from shared.correlation import CorrelationMiddleware
from shared.service.body_limit import BodyLimitMiddleware
from shared.service.errors import UnexpectedErrorMiddleware, install_error_handlers
from shared.service.metrics import RequestMetrics, metrics_response
from shared.settings import ConfigError, ServiceSettings

logger = logging.getLogger(__name__)

Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]


def make_authenticator(settings: ServiceSettings, audience: Audience) -> Authenticator:
    """Credentials, refusing the combinations SPEC section 2 forbids."""
    try:
        authenticator = Authenticator(settings.credentials, audience)
    except CredentialError as exc:
        raise ConfigError(f"invalid credentials: {exc}") from None
    if authenticator.dev_mode:
        if not is_loopback(settings.host):
            raise ConfigError("API token required for non-loopback bind")
        logger.warning("dev mode: auth not required on loopback", extra={"action": "dev_mode"})
    return authenticator


def build_app(
    *,
    settings: ServiceSettings,
    title: str,
    audience: Audience,
    rules: list[Rule],
    lifespan: Lifespan,
    routers: list[APIRouter],
) -> FastAPI:
    authenticator = make_authenticator(settings, audience)
    registry = CollectorRegistry()
    app = FastAPI(
        title=title,
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.settings = settings
    app.state.authenticator = authenticator
    app.state.registry = registry
    app.state.on_reload = authenticator.reload
    install_error_handlers(app)

    # The routes go into the app's own router, one flat list: FastAPI's include_router
    # keeps each router as a nested route that matches its routes twice per request,
    # a quarter of the CPU a small request costs (measured on heartbeats). A request is
    # matched against the routes in order, so services list their busiest routers first.
    for router in routers:
        app.router.routes.extend(router.routes)

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Any:
        return metrics_response(registry)

    policy = AccessPolicy(rules, metrics_public=not settings.metrics_auth)
    app.add_middleware(AuthMiddleware, authenticator=authenticator, policy=policy)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(UnexpectedErrorMiddleware)
    app.add_middleware(RequestMetrics, registry=registry)
    app.add_middleware(CorrelationMiddleware)
    return app
