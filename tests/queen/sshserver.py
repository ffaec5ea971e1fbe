"""A real SSH server for tests (asyncssh), whose sessions run commands locally.

It runs on its own event loop in a thread, so a synchronous test can block while the
queen (another process) talks to it. Each command runs in `sh -c` in a new process
group; the group ids are kept so the test can kill whatever the commands left behind
(a hive started with `nohup ... &` and its workers).
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from collections.abc import Mapping
from pathlib import Path

import asyncssh

from tests.procs import free_port


class _Server(asyncssh.SSHServer):
    def begin_auth(self, username: str) -> bool:
        return True  # public key auth is always required

    def public_key_auth_supported(self) -> bool:
        return True


class LocalSshServer:
    def __init__(self, root: Path, env: Mapping[str, str]) -> None:
        self.root = root
        self.env = dict(env)
        self.port = free_port()
        self.groups: list[int] = []
        self.commands: list[str] = []
        self.key_path = root / "id_ed25519"
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncssh.SSHAcceptor | None = None

    def start(self) -> None:
        client_key = asyncssh.generate_private_key("ssh-ed25519")
        client_key.write_private_key(str(self.key_path))
        os.chmod(self.key_path, 0o600)
        authorized = asyncssh.import_authorized_keys(client_key.export_public_key().decode())
        host_key = asyncssh.generate_private_key("ssh-ed25519")
        self._thread.start()

        async def listen() -> asyncssh.SSHAcceptor:
            return await asyncssh.create_server(
                _Server,
                "127.0.0.1",
                self.port,
                server_host_keys=[host_key],
                authorized_client_keys=authorized,
                process_factory=self._run,
            )

        future = asyncio.run_coroutine_threadsafe(listen(), self._loop)
        self._server = future.result(10)

    async def _run(self, process: asyncssh.SSHServerProcess[str]) -> None:
        command = process.command or ""
        self.commands.append(command)
        proc = await asyncio.create_subprocess_shell(
            command,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            stdin=asyncio.subprocess.DEVNULL,
            env={**os.environ, **self.env},
            start_new_session=True,
        )
        self.groups.append(proc.pid)
        out, err = await proc.communicate()
        process.stdout.write(out.decode(errors="replace"))
        process.stderr.write(err.decode(errors="replace"))
        process.exit(proc.returncode or 0)

    def stop(self) -> None:
        for pgid in self.groups:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

        async def close() -> None:
            if self._server is not None:
                self._server.close()
                await self._server.wait_closed()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()
