"""`rbee`, the command line."""

from __future__ import annotations

import sys

from rbee_keeper.cli import main as run


def main() -> None:
    sys.exit(run())


if __name__ == "__main__":
    main()
