"""`llm-worker-rbee`: one process serving one model.

The model load starts before FastAPI and uvicorn are imported (see
:mod:`llm_worker.preload`), so a cold start pays for the imports and the load once, not
one after the other.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from llm_worker.settings import WorkerSettings
from shared.service.entrypoint import main_for

if TYPE_CHECKING:
    from fastapi import FastAPI


def _create_app(settings: WorkerSettings) -> FastAPI:
    from llm_worker.preload import Preload

    preload = Preload(settings)
    from llm_worker.app import create_app

    return create_app(settings, preload)


def main(argv: Sequence[str] | None = None) -> None:
    sys.exit(
        main_for(
            WorkerSettings,
            _create_app,
            prog="llm-worker-rbee",
            service="llm-worker-rbee",
            description="Serve one GGUF model with llama.cpp over HTTP and SSE.",
            drain_timeout=lambda s: s.drain_timeout_s,
            argv=argv,
        )
    )


if __name__ == "__main__":
    main()
