#!/usr/bin/env bash
# The test command: lint, types, then the whole suite (unit, in-process API, real processes).
# Extra arguments go to pytest, e.g. `scripts/test.sh -k worker -x`.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check .
.venv/bin/mypy
.venv/bin/pytest -q "$@"
