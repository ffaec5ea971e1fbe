"""One worker process started ahead of need, so that a cold start only loads the model.

The other half is :mod:`llm_worker.standby`: a worker started with `--standby
--worker-id ID --callback-url URL` imports everything a worker needs and waits for one
line on standard input, the arguments of the worker it becomes. The pool claims the
standby when it creates a worker (the standby's id becomes the worker's id, since the
process's command line already names it) and hands it the arguments at the worker's
first launch. A claimed standby is replaced once the worker it became is ready (or after
`REFILL_LATEST_S`), so the replacement's imports do not compete with that model load.

The standby's standard input is a pipe that only this object writes; closing it without a
line lets the standby go (it exits 0). The pipe also closes when the hive dies, so a
standby never outlives its hive. Its output goes to the log file of the worker it will
be, never to a pipe.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import signal
from collections.abc import Callable
from pathlib import Path

from rbee_hive.process import ChildProcess

logger = logging.getLogger(__name__)

REFILL_LATEST_S = 30.0


def new_worker_id() -> str:
    return f"w-{secrets.token_hex(4)}"


class Claimed:
    """A standby given to one worker: its id, and the process waiting for arguments."""

    def __init__(self, worker_id: str, process: asyncio.subprocess.Process) -> None:
        self.worker_id = worker_id
        self._process = process

    @property
    def alive(self) -> bool:
        return self._process.returncode is None

    async def assign(self, args: list[str]) -> ChildProcess:
        """Hand over the worker's arguments; from now on it is that worker's process."""
        stdin = self._process.stdin
        assert stdin is not None
        stdin.write(json.dumps(args).encode() + b"\n")
        with contextlib.suppress(ConnectionError):
            await stdin.drain()
        stdin.close()
        return ChildProcess(self._process)

    def kill(self) -> None:
        if self._process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._process.kill()

    def release(self) -> None:
        """Not needed after all: let it exit (EOF), and make sure it does."""
        if self._process.stdin is not None:
            self._process.stdin.close()
        if self._process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._process.send_signal(signal.SIGTERM)


class Standby:
    """Owns at most one waiting worker process; only the pool calls it, on the event loop."""

    def __init__(
        self,
        *,
        enabled: bool,
        command: str,
        callback_url: str,
        env: Callable[[], dict[str, str]],
        logs_dir: Path,
    ) -> None:
        self.enabled = enabled
        self.command = command
        self.callback_url = callback_url
        self.env = env
        self.logs_dir = logs_dir
        self._held: Claimed | None = None
        self._refill: asyncio.Task[None] | None = None
        self._closed = False

    async def start(self) -> None:
        """Start a standby unless one is held (or standbys are off, or we are closing)."""
        if not self.enabled or self._closed or (self._held and self._held.alive):
            return
        worker_id = new_worker_id()
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        try:
            with (self.logs_dir / f"worker-{worker_id}.log").open("ab") as log:
                process = await asyncio.create_subprocess_exec(
                    self.command,
                    "--standby",
                    "--worker-id",
                    worker_id,
                    "--callback-url",  # not used until assigned; names the owner in `ps`
                    self.callback_url,
                    stdin=asyncio.subprocess.PIPE,
                    stdout=log,
                    stderr=asyncio.subprocess.STDOUT,
                    env=self.env(),
                )
        except OSError as exc:
            logger.warning(
                "no standby worker: %s", exc.strerror, extra={"action": "standby_failed"}
            )
            return
        if self._closed:  # closed while it started
            Claimed(worker_id, process).release()
            return
        self._held = Claimed(worker_id, process)
        logger.info(
            "standby worker started (pid %d)",
            process.pid,
            extra={"action": "standby_started", "worker_id": worker_id},
        )

    def claim(self, refill_after: asyncio.Event) -> Claimed | None:
        """The held standby for a new worker, if one is alive; a new one is started once
        `refill_after` is set (the new worker is ready) or at the latest in 30 s."""
        held, self._held = self._held, None
        if held is not None and not held.alive:
            held = None
        if self.enabled and not self._closed and (self._refill is None or self._refill.done()):
            self._refill = asyncio.create_task(self._refill_when(refill_after))
        return held

    async def _refill_when(self, event: asyncio.Event) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout=REFILL_LATEST_S)
        await self.start()

    async def close(self) -> None:
        self._closed = True
        if self._refill is not None:
            self._refill.cancel()
            await asyncio.gather(self._refill, return_exceptions=True)
        held, self._held = self._held, None
        if held is not None:
            held.release()

    def kill(self) -> None:
        """SIGKILL the held standby now: the last resort of a forced exit."""
        if self._held is not None:
            self._held.kill()
