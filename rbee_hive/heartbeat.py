"""Heartbeat to the queen: register once (idempotent PUT), then a full snapshot each interval.

One background task owns the conversation with the queen. It never blocks anything else:
every call has a short timeout, and while the queen is away it retries with doubling
backoff (capped at the heartbeat interval x 6). A heartbeat answered 404 (the queen lost
us, e.g. its database was reset) registers again. Each snapshot is complete, so a lost
heartbeat costs nothing but freshness.

Besides the interval, a change the queen should know at once (a worker spawned, ready,
failed or gone) calls :meth:`HeartbeatLoop.nudge`, which sends the next snapshot now:
the queen then schedules onto a new worker without waiting up to a whole interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import httpx

from shared import __version__
from shared.auth import Audience, Credentials, Role
from shared.hives import Capabilities, Heartbeat, HiveRegistration

logger = logging.getLogger(__name__)

Snapshot = Callable[[], Awaitable[Heartbeat]]
CapabilitiesSource = Callable[[], Awaitable[Capabilities]]


class HeartbeatLoop:
    def __init__(
        self,
        *,
        queen_url: str,
        hive_id: str,
        hive_url: str,
        interval_s: float,
        client: httpx.AsyncClient,
        credentials: Callable[[], Credentials],
        capabilities: CapabilitiesSource,
        snapshot: Snapshot,
    ) -> None:
        self.base = f"{queen_url.rstrip('/')}/v2/hives/{hive_id}"
        self.hive_url = hive_url
        self.interval_s = interval_s
        self.client = client
        self.credentials = credentials
        self.capabilities = capabilities
        self.snapshot = snapshot
        self.registered = False
        self.sent = 0
        self._nudged = asyncio.Event()

    def nudge(self) -> None:
        """Send the next heartbeat now rather than at the end of the interval."""
        self._nudged.set()

    def _headers(self) -> dict[str, str]:
        token = self.credentials().bearer_for(Audience.QUEEN, Role.HIVE, ttl_s=60)
        return {"Authorization": f"Bearer {token}"} if token else {}

    async def _register(self) -> None:
        body = HiveRegistration(
            url=self.hive_url, version=__version__, capabilities=await self.capabilities()
        )
        response = await self.client.put(
            self.base,
            json=body.model_dump(mode="json"),
            headers=self._headers(),
            timeout=self.interval_s * 2,
        )
        response.raise_for_status()
        self.registered = True
        logger.info("registered with the queen", extra={"action": "hive_registered"})

    async def _beat(self) -> None:
        self._nudged.clear()  # what changed before this point is in this snapshot
        body = await self.snapshot()
        response = await self.client.post(
            self.base + "/heartbeat",
            json=body.model_dump(mode="json"),
            headers=self._headers(),
            timeout=self.interval_s * 2,
        )
        if response.status_code == 404:
            self.registered = False
        response.raise_for_status()
        self.sent += 1

    async def run(self) -> None:
        backoff = min(1.0, self.interval_s)
        while True:
            try:
                if not self.registered:
                    await self._register()
                await self._beat()
            except httpx.HTTPError as exc:
                logger.warning(
                    "queen unreachable or refused the heartbeat: %s; retry in %g s",
                    type(exc).__name__,
                    backoff,
                    extra={"action": "heartbeat_failed"},
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.interval_s * 6)
                continue
            backoff = min(1.0, self.interval_s)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._nudged.wait(), timeout=self.interval_s)
