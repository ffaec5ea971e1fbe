"""The hive's long-lived parts, opened in the app's lifespan and closed after it.

Start order: hive.db (drop catalog entries whose file vanished) -> resource probe ->
provisioner -> pool (adopt the workers an earlier hive left, start a standby worker) ->
heartbeat task. Stop order is the reverse; `begin_shutdown` may run earlier, from the
stop signal, so workers start draining while uvicorn is still finishing open requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from rbee_hive.catalog import Store
from rbee_hive.heartbeat import HeartbeatLoop
from rbee_hive.pool import Pool
from rbee_hive.provisioner import Provisioner
from rbee_hive.resources import Resources
from rbee_hive.settings import HiveSettings
from shared.auth import Audience, Credentials, Role
from shared.hives import Heartbeat
from shared.service.runner import KEEP_ALIVE_S

logger = logging.getLogger(__name__)


@dataclass
class Hive:
    settings: HiveSettings
    store: Store
    resources: Resources
    provisioner: Provisioner
    pool: Pool
    client: httpx.AsyncClient
    heartbeat: HeartbeatLoop | None = None
    heartbeat_task: asyncio.Task[None] | None = None
    _downloads_closed: asyncio.Task[None] | None = None

    @classmethod
    async def start(cls, settings: HiveSettings, credentials: Callable[[], Credentials]) -> Hive:
        settings.models_dir.mkdir(parents=True, exist_ok=True)
        settings.logs_dir.mkdir(parents=True, exist_ok=True)
        store = await Store.open(settings.db_path)
        await store.prune_missing()
        resources = Resources(settings.hive_id, settings.data_dir)
        await resources.start()
        client = httpx.AsyncClient(
            timeout=httpx.Timeout(30.0), limits=_limits(settings.heartbeat_interval_s)
        )
        provisioner = Provisioner(settings, store, client)

        def worker_token() -> str | None:
            return credentials().bearer_for(Audience.WORKER, Role.HIVE, ttl_s=60)

        pool = Pool(settings, store, provisioner, resources, client, worker_token)
        hive = cls(settings, store, resources, provisioner, pool, client)
        await pool.adopt_existing()
        await pool.standby.start()
        if settings.queen_url:
            hive.heartbeat = HeartbeatLoop(
                queen_url=settings.queen_url,
                hive_id=settings.hive_id,
                hive_url=settings.base_url,
                interval_s=settings.heartbeat_interval_s,
                client=client,
                credentials=credentials,
                capabilities=resources.capabilities,
                snapshot=hive.snapshot,
            )
            hive.heartbeat_task = asyncio.create_task(hive.heartbeat.run())
            pool.on_change = hive.heartbeat.nudge
        return hive

    async def snapshot(self) -> Heartbeat:
        # Every name this hive can serve without a download: files in the catalog, and
        # the bundled quick-start model (assembled locally in seconds when first used).
        models = set()
        for entry in await self.provisioner.catalog():
            models.add(entry.model_ref)
            if entry.alias:
                models.add(entry.alias)
        return Heartbeat(
            url=self.settings.base_url,
            workers=self.pool.infos(),
            capabilities=await self.resources.capabilities(),
            models=sorted(models),
        )

    def begin_shutdown(self) -> None:
        """From the stop signal or `POST /v1/shutdown`: workers start stopping now, and
        running downloads end (their streams get an error event), so open streams do not
        hold up the exit."""
        if self.pool.closing:
            return
        logger.info("stopping all workers", extra={"action": "hive_shutdown"})
        self.pool.begin_close()
        self._downloads_closed = asyncio.create_task(self.provisioner.close())

    async def close(self) -> None:
        await self.pool.begin_close()
        if self.heartbeat_task is not None:
            self.heartbeat_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.heartbeat_task
        await self.provisioner.close()
        await self.client.aclose()
        await self.store.close()


def _limits(heartbeat_interval_s: float) -> httpx.Limits:
    """Keep the connection to the queen open from one heartbeat to the next.

    httpx drops idle connections after 5 s, the default heartbeat interval, so every beat
    paid a new TCP connection at both ends. Idle connections now live for two intervals,
    but close before the queen's server closes them (racing its close fails a request)."""
    longest = KEEP_ALIVE_S - 5.0
    return httpx.Limits(keepalive_expiry=min(longest, max(5.0, 2 * heartbeat_interval_s)))
