"""`llm-worker-rbee`: one process serving one model.

The model load starts before FastAPI and uvicorn are imported (see
:mod:`llm_worker.preload`), so a cold start pays for the imports and the load once, not
one after the other. A worker started with `--standby` does its imports first and waits
for its arguments on standard input (see :mod:`llm_worker.standby`), so that a hive can
keep one ready and a cold start pays for the load alone.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from llm_worker.settings import WorkerSettings
from llm_worker.standby import STANDBY_FLAG, wait_for_assignment
from shared.service.entrypoint import main_for

if TYPE_CHECKING:
    from fastapi import FastAPI


def _create_app(settings: WorkerSettings) -> FastAPI:
    from llm_worker.preload import Preload

    preload = Preload(settings)
    from llm_worker.app import create_app

    return create_app(settings, preload)


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == [STANDBY_FLAG]:  # see llm_worker.standby
        try:
            assigned = wait_for_assignment(args[1:])
        except ValueError as exc:  # logging is not set up yet: one line on stderr, exit 1
            sys.exit(f"llm-worker-rbee: standby: {exc}")
        if assigned is None:
            sys.exit(0)
        args = assigned
    sys.exit(
        main_for(
            WorkerSettings,
            _create_app,
            prog="llm-worker-rbee",
            service="llm-worker-rbee",
            description="Serve one GGUF model with llama.cpp over HTTP and SSE.",
            drain_timeout=lambda s: s.drain_timeout_s,
            argv=args,
        )
    )


if __name__ == "__main__":
    main()
