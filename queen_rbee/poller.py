"""Snapshots pulled from hives that do not send heartbeats themselves.

A hive added by URL (`POST /v2/hives {id, url}`) may run without `--queen-url`. For such
a hive (and for any hive whose heartbeats stopped) this task asks the hive itself, every
`interval` seconds, for the same facts a heartbeat carries (capabilities, workers,
catalog) and hands them to the registry as a heartbeat. A hive that does not answer gets
no snapshot, so it goes stale and offline exactly as a silent one would. Hives that beat
on their own are left alone; the registry stays the single writer of hive state.
"""

from __future__ import annotations

import asyncio
import logging
import time

from pydantic import ValidationError

from queen_rbee.control import Control
from queen_rbee.registry import Hive, Registry
from shared.errors import RbeeError

logger = logging.getLogger(__name__)


class HivePoller:
    def __init__(self, registry: Registry, control: Control, interval_s: float) -> None:
        self.registry = registry
        self.control = control
        self.interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            quiet = [h for h in self.registry.hives() if self._quiet(h)]
            await asyncio.gather(*(self._poll(h) for h in quiet))

    def _quiet(self, hive: Hive) -> bool:
        if not hive.url:
            return False
        last = hive.last_heartbeat
        return last is None or time.time() - last > self.interval_s * 1.5

    async def _poll(self, hive: Hive) -> None:
        try:
            async with asyncio.timeout(self.interval_s * 2):
                beat = await self.control.snapshot(hive.url or "")
        except (RbeeError, TimeoutError, ValidationError) as exc:
            logger.debug("hive %s not polled: %s", hive.id, type(exc).__name__)
            return
        if hive.id in {h.id for h in self.registry.hives()}:
            await self.registry.heartbeat(hive.id, beat)
