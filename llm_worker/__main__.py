"""`llm-worker-rbee`: one process serving one model."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from llm_worker.app import create_app
from llm_worker.settings import WorkerSettings
from shared.service.runner import main_for


def main(argv: Sequence[str] | None = None) -> None:
    sys.exit(
        main_for(
            WorkerSettings,
            create_app,
            prog="llm-worker-rbee",
            service="llm-worker-rbee",
            description="Serve one GGUF model with llama.cpp over HTTP and SSE.",
            drain_timeout=lambda s: s.drain_timeout_s,
            argv=argv,
        )
    )


if __name__ == "__main__":
    main()
