"""The worker's life around its model: load, tell the hive, watch for being orphaned.

* The HTTP server is up before the model loads (`/health` answers, inference gets 503
  WORKER_LOADING); the load runs in a thread.
* Once loaded, the ready callback goes to the hive, retried with backoff.
* Orphan watch: when the parent process (the hive) has died and the hive's `/health` has
  not answered for `orphan_grace_s`, the worker stops itself. A hive restarted within the
  grace answers again and adopts the worker; nobody else keeps it alive.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from urllib.parse import urlsplit

import httpx

from llm_worker.preload import Preload
from llm_worker.runtime import WorkerRuntime
from shared.auth import Audience, Credentials, Role
from shared.workers import ReadyCallback

logger = logging.getLogger(__name__)


async def load_model(
    runtime: WorkerRuntime, on_failure: Callable[[], None], preload: Preload | None = None
) -> bool:
    settings = runtime.settings
    started = time.perf_counter()
    try:
        await runtime.load(preload)
    except Exception as exc:
        runtime.state = "failed"
        logger.error(
            "model failed to load: %s",
            exc,
            extra={"action": "model_load_failed", "worker_id": settings.worker_id},
        )
        on_failure()
        return False
    logger.info(
        "model loaded in %.2f s (%s, n_ctx %d, %d slots)",
        time.perf_counter() - started,
        settings.model.name,
        runtime.n_ctx,
        settings.slots,
        extra={
            "action": "model_loaded",
            "worker_id": settings.worker_id,
            "model": settings.effective_model_ref,
        },
    )
    return True


async def send_ready_callback(runtime: WorkerRuntime, credentials: Credentials) -> None:
    settings = runtime.settings
    if not settings.callback_url:
        return
    body = ReadyCallback(
        worker_id=settings.worker_id,
        url=settings.advertised_url,
        model_ref=settings.effective_model_ref,
        slots_total=runtime.slots_total,
    ).model_dump()
    delay = 0.1
    async with httpx.AsyncClient(timeout=5.0) as client:
        for attempt in range(1, settings.callback_attempts + 1):
            token = credentials.bearer_for(Audience.HIVE, Role.WORKER, ttl_s=60)
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            try:
                response = await client.post(settings.callback_url, json=body, headers=headers)
                if response.is_success:
                    logger.info(
                        "ready callback accepted",
                        extra={"action": "ready_callback", "worker_id": settings.worker_id},
                    )
                    return
                logger.warning(
                    "ready callback refused with HTTP %d",
                    response.status_code,
                    extra={"action": "ready_callback"},
                )
            except httpx.HTTPError as exc:
                logger.warning(
                    "ready callback attempt %d failed: %s",
                    attempt,
                    exc,
                    extra={"action": "ready_callback"},
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


def _hive_health_url(callback_url: str) -> str:
    parts = urlsplit(callback_url)
    return f"{parts.scheme}://{parts.netloc}/health"


async def watch_for_orphaning(
    runtime: WorkerRuntime, stop: Callable[[], None], interval_s: float = 0.5
) -> None:
    settings = runtime.settings
    if not settings.callback_url:
        return  # started by hand: nobody to be orphaned from
    parent = os.getppid()
    health_url = _hive_health_url(settings.callback_url)
    last_seen = time.monotonic()
    async with httpx.AsyncClient(timeout=1.0) as client:
        while True:
            await asyncio.sleep(interval_s)
            if os.getppid() == parent:
                last_seen = time.monotonic()
                continue
            try:
                if (await client.get(health_url)).is_success:
                    last_seen = time.monotonic()
                    continue
            except httpx.HTTPError:
                pass
            if time.monotonic() - last_seen > settings.orphan_grace_s:
                logger.warning(
                    "hive gone for %.0f s: stopping",
                    settings.orphan_grace_s,
                    extra={"action": "orphaned", "worker_id": settings.worker_id},
                )
                stop()
                return
