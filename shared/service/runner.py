"""Running a service under uvicorn with rbee's exit-status and signal rules.

* SIGTERM / SIGINT: the app's `on_stop_signal` hook runs first (it starts draining: new
  work gets 503 SHUTTING_DOWN), then uvicorn stops listening and waits for in-flight
  requests, streams included, up to the drain budget. A second signal forces the exit.
* SIGHUP: reloads credentials, in every service.
* Exit status: 0 after a graceful stop, whatever uvicorn does with the signal afterwards
  (some versions re-raise it); 1 when start-up fails; the app may set another status in
  `app.state.exit_code` (the worker does, when its model fails to load).

`main_for` lives in :mod:`shared.service.entrypoint` (re-exported here), which imports
neither uvicorn nor FastAPI, so a service can start slow work before the web stack loads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import Callable, Generator

import uvicorn
from fastapi import FastAPI

from shared.service.entrypoint import main_for
from shared.settings import ServiceSettings

__all__ = ["main_for", "serve"]

logger = logging.getLogger(__name__)

# How long an idle client connection stays open: longer than a hive's heartbeat interval,
# so each hive keeps one connection to the queen (see rbee_hive.hive).
KEEP_ALIVE_S = 30


class _Server(uvicorn.Server):
    """uvicorn's server with our signal handlers instead of its own."""

    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self.app = app
        app.state.request_exit = self.request_exit

    def request_exit(self) -> None:
        """Begin a graceful stop, from a signal or a shutdown request."""
        hook: Callable[[], None] | None = getattr(self.app.state, "on_stop_signal", None)
        if hook is not None and not self.should_exit:
            hook()
        if self.should_exit:
            self.force_exit = True
        self.should_exit = True

    def _reload(self) -> None:
        hook: Callable[[], None] | None = getattr(self.app.state, "on_reload", None)
        if hook is not None:
            hook()

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        loop = asyncio.get_running_loop()
        handlers = {
            signal.SIGINT: self.request_exit,
            signal.SIGTERM: self.request_exit,
            signal.SIGHUP: self._reload,
        }
        for sig, handler in handlers.items():
            loop.add_signal_handler(sig, handler)
        try:
            yield
        finally:
            for sig in handlers:
                loop.remove_signal_handler(sig)


def serve(
    app: FastAPI,
    settings: ServiceSettings,
    *,
    drain_timeout_s: float,
    sock: socket.socket | None = None,
) -> int:
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        lifespan="on",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=max(1, round(drain_timeout_s)),
        loop="uvloop",
        http="httptools",
        timeout_keep_alive=KEEP_ALIVE_S,
    )
    server = _Server(config, app)
    try:
        server.run(sockets=[sock] if sock else None)
    except SystemExit as exc:  # uvicorn exits 1 itself when it cannot bind
        return int(exc.code or 1)
    if not server.started:
        return 1
    code: int = getattr(app.state, "exit_code", 0)
    return code
