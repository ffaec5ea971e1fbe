"""The whole `__main__` of a service: flags -> settings -> app -> serve -> exit status.

This module imports neither uvicorn nor FastAPI: parsing and validating settings is fast,
and `create_app` decides what to import and when (the worker starts loading its model
before the web stack is imported, so the two overlap).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from shared.logs import configure_logging
from shared.settings import ConfigError, S, settings_from_argv

if TYPE_CHECKING:
    from fastapi import FastAPI


def main_for(
    settings_cls: type[S],
    create_app: Callable[[S], FastAPI],
    *,
    prog: str,
    service: str,
    description: str,
    drain_timeout: Callable[[S], float],
    argv: Sequence[str] | None = None,
) -> int:
    from shared import __version__

    try:
        settings, version = settings_from_argv(settings_cls, argv, prog, description)
        if version or settings is None:
            print(f"{prog} {__version__}")
            return 0
        configure_logging(service, settings.log_format, settings.log_level)
        app = create_app(settings)
    except ConfigError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
    from shared.service.runner import serve

    return serve(app, settings, drain_timeout_s=drain_timeout(settings))
