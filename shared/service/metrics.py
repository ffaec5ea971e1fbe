"""Prometheus metrics: one registry per app (tests build several apps in one process).

`RequestMetrics` is pure ASGI and counts requests by route template, method and status.
Services add their own metrics to the same registry.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.responses import Response


class RequestMetrics:
    def __init__(self, app: Any, registry: CollectorRegistry) -> None:
        self.app = app
        self.requests = Counter(
            "rbee_requests_total",
            "HTTP requests by endpoint, method and status",
            ["endpoint", "method", "status"],
            registry=registry,
        )
        self.errors = Counter(
            "rbee_errors_total",
            "HTTP error responses by endpoint and status",
            ["endpoint", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "rbee_request_duration_seconds",
            "Time to the response headers, by endpoint",
            ["endpoint"],
            registry=registry,
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30),
        )
        # labelled children, looked up once per label set: `labels()` costs more than
        # the increment itself, on every request
        self._latency: dict[str, Any] = {}
        self._counted: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def observe(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                endpoint = _endpoint(scope)
                latency = self._latency.get(endpoint)
                if latency is None:
                    latency = self._latency[endpoint] = self.latency.labels(endpoint)
                latency.observe(time.perf_counter() - started)
            await send(message)

        try:
            await self.app(scope, receive, observe)
        finally:
            self._count(_endpoint(scope), scope["method"], status)

    def _count(self, endpoint: str, method: str, status: int) -> None:
        key = (endpoint, method, status)
        children = self._counted.get(key)
        if children is None:
            errors = self.errors.labels(endpoint, str(status)) if status >= 400 else None
            children = self._counted[key] = (
                self.requests.labels(endpoint, method, str(status)),
                errors,
            )
        children[0].inc()
        if children[1] is not None:
            children[1].inc()


def _endpoint(scope: dict[str, Any]) -> str:
    route = scope.get("route")
    return getattr(route, "path", None) or "unmatched"


def metrics_response(registry: CollectorRegistry) -> Response:
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
