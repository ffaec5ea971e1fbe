"""A worker started ahead of need: everything imported, waiting to be told what to serve.

Most of a worker's cold start is Python importing llama-cpp-python, FastAPI, uvicorn and
pydantic (about a second on a small machine), not llama.cpp loading the weights. So the
hive keeps one worker process started with `--standby --worker-id ID`: it imports the
whole web stack and the engine, then blocks on one line of standard input. A spawn hands
it that line, a JSON list with the worker's command-line arguments (the same ones a
fresh `llm-worker-rbee` would get), and from there it runs as any other worker: its
cold start is only the model load.

The protocol is one line on a pipe the hive owns; the hive closing that pipe without a
line (it stopped, or died) makes the standby exit 0 at once, so none outlives its hive.
The id is fixed at start so that the process's command line names the worker it becomes,
as every worker's does (the hive recognises its workers by it after a restart).
"""

from __future__ import annotations

import importlib
import itertools
import json
import sys
from collections.abc import Sequence

STANDBY_FLAG = "--standby"
WARM_MODULES = (
    "llm_worker.app",  # FastAPI, pydantic, prometheus, the routes
    "llm_worker.engine",  # llama_cpp and its shared libraries
    "shared.service.runner",  # uvicorn
)


def warm_up() -> None:
    """Import what a worker needs before it can load a model and serve."""
    for module in WARM_MODULES:
        importlib.import_module(module)


def read_assignment(own_args: Sequence[str], line: str) -> list[str] | None:
    """The arguments in `line`, or None for an empty line (the hive let us go).

    The assignment must carry the id this standby was started with: its command line
    already names that worker.
    """
    if not line.strip():
        return None
    args = json.loads(line)
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise ValueError("a standby assignment is a JSON list of strings")
    if _worker_id(args) != _worker_id(own_args):
        raise ValueError("the assignment is for another worker id")
    return list(args)


def wait_for_assignment(own_args: Sequence[str]) -> list[str] | None:
    warm_up()
    return read_assignment(own_args, sys.stdin.readline())


def _worker_id(args: Sequence[str]) -> str | None:
    for flag, value in itertools.pairwise(args):
        if flag == "--worker-id":
            return value
    return None
