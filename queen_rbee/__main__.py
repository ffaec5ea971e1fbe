"""`queen-rbee`: flags -> settings -> app -> uvicorn, with rbee's exit-status rules."""

from __future__ import annotations

import sys

from queen_rbee.app import create_app
from queen_rbee.settings import QueenSettings
from shared.service.runner import main_for


def main() -> None:
    sys.exit(
        main_for(
            QueenSettings,
            create_app,
            prog="queen-rbee",
            service="queen-rbee",
            description="rbee's queen: OpenAI API, scheduler, hive registry and relay.",
            drain_timeout=lambda s: s.drain_timeout_s,
        )
    )


if __name__ == "__main__":
    main()
