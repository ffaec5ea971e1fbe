"""`rbee-hive` / `python -m rbee_hive`: flags -> settings -> app -> uvicorn (SPEC 1)."""

from __future__ import annotations

import sys

from rbee_hive.app import create_app
from rbee_hive.settings import HiveSettings
from shared.service.runner import main_for


def main() -> None:
    sys.exit(
        main_for(
            HiveSettings,
            create_app,
            prog="rbee-hive",
            service="rbee-hive",
            description="rbee-hive: the per-machine daemon that downloads models and runs workers",
            drain_timeout=lambda s: s.drain_timeout_s,
        )
    )


if __name__ == "__main__":
    main()
