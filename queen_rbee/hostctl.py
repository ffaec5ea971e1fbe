"""Starting and stopping hives: over SSH (asyncssh) for the hives the queen manages.

Adding a hive with `ssh` runs a preflight (connect, `rbee-hive --version`), starts the hive
in the background on that host (`nohup`, its pid echoed back and kept in the registry),
and polls its `/health`. Stopping asks the hive to shut down over HTTP (it stops its
workers first) and falls back to `kill <pid>` over SSH. Only hives with a recorded pid
are stopped at the queen's own shutdown: the ones it started; a queen that starts again
starts its SSH hives again (in the background, so a host that is down delays nothing).
Every argument of a remote command is quoted with `shlex.quote`.

An operator's `start` works for SSH hives only: a hive added by URL is run by someone
else, and the queen has no way onto its machine (409 `HIVE_NOT_MANAGED`). `stop` works for
every hive that answers: it is asked to shut down over HTTP (`POST /v1/shutdown`), as the
cascading shutdown does; an SSH hive also gets the `kill` fallback. One lock per hive
serialises starts and stops, so two operators cannot start one hive twice.
"""

from __future__ import annotations

import asyncio
import logging
import shlex
from typing import Any, Literal

import asyncssh

from queen_rbee.control import Control
from queen_rbee.registry import Hive, Registry
from queen_rbee.settings import QueenSettings
from shared.auth import is_loopback
from shared.errors import HiveNotManaged, HiveUnreachable, RbeeError
from shared.hives import SshTarget

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10.0
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0

HiveStartResult = Literal["started", "already_running"]
HiveStopResult = Literal["stopped", "not_running", "stopping"]


class HiveHosts:
    def __init__(self, settings: QueenSettings, registry: Registry, control: Control) -> None:
        self.settings = settings
        self.registry = registry
        self.control = control
        self._locks: dict[str, asyncio.Lock] = {}

    def _lock(self, hive_id: str) -> asyncio.Lock:
        return self._locks.setdefault(hive_id, asyncio.Lock())

    async def _connect(self, target: SshTarget) -> asyncssh.SSHClientConnection:
        options: dict[str, Any] = {"port": target.port, "username": target.user}
        if target.key_path:
            options["client_keys"] = [target.key_path]
        if self.settings.ssh_no_host_check:
            options["known_hosts"] = None
        elif self.settings.ssh_known_hosts is not None:
            options["known_hosts"] = str(self.settings.ssh_known_hosts)
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                return await asyncssh.connect(target.host, **options)
        except (asyncssh.Error, OSError, TimeoutError) as exc:
            raise HiveUnreachable(
                f"SSH to {target.host}:{target.port} failed ({type(exc).__name__})."
            ) from None

    async def _run(self, target: SshTarget, command: str) -> str:
        conn = await self._connect(target)
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S * 3):
                result = await conn.run(command, check=False)
        except (asyncssh.Error, OSError, TimeoutError) as exc:
            raise HiveUnreachable(
                f"SSH command failed on {target.host} ({type(exc).__name__})."
            ) from None
        finally:
            conn.close()
        if result.exit_status != 0:
            raise HiveUnreachable(
                f"'{self.settings.ssh_hive_command}' failed on {target.host} "
                f"with exit status {result.exit_status}."
            )
        return str(result.stdout or "")

    def hive_url(self, target: SshTarget) -> str:
        host = "127.0.0.1" if is_loopback(target.host) else target.host
        return f"http://{host}:{self.settings.ssh_hive_port}"

    async def preflight(self, target: SshTarget) -> str:
        version = await self._run(
            target, f"{shlex.quote(self.settings.ssh_hive_command)} --version"
        )
        return version.strip()

    async def start(self, hive: Hive) -> None:
        """Start an SSH hive and wait until it answers."""
        async with self._lock(hive.id):
            await self._start(hive)

    async def _start(self, hive: Hive) -> None:
        assert hive.ssh is not None
        target = hive.ssh
        bind = "127.0.0.1" if is_loopback(target.host) else "0.0.0.0"
        args = [
            self.settings.ssh_hive_command,
            "--host",
            bind,
            "--port",
            str(self.settings.ssh_hive_port),
            "--hive-id",
            hive.id,
            "--queen-url",
            self.settings.own_url,
        ]
        logs = '"${RBEE_HOME:-$HOME/.rbee}/logs"'
        command = (
            f"mkdir -p {logs} && nohup {' '.join(shlex.quote(a) for a in args)} "
            f"> {logs}/hive-{shlex.quote(hive.id)}.log 2>&1 < /dev/null & echo $!"
        )
        out = await self._run(target, command)
        pid = int(out.strip().splitlines()[-1]) if out.strip() else None
        url = self.hive_url(target)
        await self.registry.set_ssh_pid(hive, pid, url)
        logger.info(
            "hive started over ssh", extra={"action": "ssh_start", "hive_id": hive.id, "pid": pid}
        )
        try:
            async with asyncio.timeout(START_TIMEOUT_S):
                while not await self.control.healthy(url):  # noqa: ASYNC110 - remote state
                    await asyncio.sleep(0.2)
        except TimeoutError:
            raise HiveUnreachable(
                f"The hive started on {target.host} did not answer within {START_TIMEOUT_S:.0f} s."
            ) from None

    async def stop(self, hive: Hive) -> None:
        """Stop an SSH hive this queen started; any other hive is left alone."""
        async with self._lock(hive.id):
            await self._stop(hive)

    async def _stop(self, hive: Hive) -> None:
        if hive.ssh is None or hive.ssh_pid is None:
            return
        if hive.url:
            try:
                await self.control.call(hive.url, "POST", "/v1/shutdown")
            except RbeeError as exc:
                logger.info("hive shutdown call failed: %s", exc.code, extra={"hive_id": hive.id})
            if await self._stopped(hive.url):
                await self.registry.set_ssh_pid(hive, None, None)
                return
        try:
            await self._run(hive.ssh, f"kill {int(hive.ssh_pid)}")
        except RbeeError as exc:
            logger.warning("could not stop hive %s: %s", hive.id, exc.message)
        await self.registry.set_ssh_pid(hive, None, None)

    async def _stopped(self, url: str) -> bool:
        try:
            async with asyncio.timeout(STOP_TIMEOUT_S):
                while await self.control.healthy(url, wait_s=1.0):  # noqa: ASYNC110
                    await asyncio.sleep(0.2)
        except TimeoutError:
            return False
        return True

    async def start_known(self) -> None:
        """At the queen's start: bring up again the SSH hives it stopped when it last stopped."""
        ssh_hives = [h for h in self.registry.hives() if h.ssh is not None]
        results = await asyncio.gather(
            *(self._restart(h) for h in ssh_hives), return_exceptions=True
        )
        for hive, result in zip(ssh_hives, results, strict=True):
            if isinstance(result, BaseException):
                logger.warning(
                    "hive %s not started: %s",
                    hive.id,
                    getattr(result, "message", result),
                    extra={"action": "ssh_start", "hive_id": hive.id},
                )

    async def _restart(self, hive: Hive) -> None:
        async with self._lock(hive.id):
            if hive.url and await self.control.healthy(hive.url):
                return  # still running (the queen did not stop it, or someone else started it)
            await self._start(hive)

    async def start_hive(self, hive: Hive) -> HiveStartResult:
        """An operator's start: SSH hives only; one that already answers is left alone."""
        if hive.ssh is None:
            raise HiveNotManaged(
                f"Hive '{hive.id}' was added by URL, so the queen cannot start it: start "
                "rbee-hive on its machine, or add the hive with SSH to let the queen manage it."
            )
        async with self._lock(hive.id):
            if hive.url and await self.control.healthy(hive.url):
                return "already_running"
            await self._start(hive)
        return "started"

    async def stop_hive(self, hive: Hive) -> HiveStopResult:
        """An operator's stop: the hive stops its workers and exits; the queen marks it
        offline at once rather than offering it and its workers until it goes stale."""
        async with self._lock(hive.id):
            running = hive.url is not None and await self.control.healthy(hive.url)
            if hive.ssh is not None and hive.ssh_pid is not None:
                await self._stop(hive)  # HTTP first, `kill` over SSH if that fails
            elif running and hive.url is not None:
                await self.control.shutdown(hive.url)
                if not await self._stopped(hive.url):
                    return "stopping"
        await self.registry.mark_stopped(hive.id)
        return "stopped" if running else "not_running"

    async def stop_started(self) -> None:
        """Stop every hive this queen started, in parallel."""
        started = [h for h in self.registry.hives() if h.ssh is not None and h.ssh_pid]
        await asyncio.gather(*(self.stop(h) for h in started), return_exceptions=True)
