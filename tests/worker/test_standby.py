"""The standby's side of the hand-over: one line of arguments, for the id it was started with."""

from __future__ import annotations

import json

import pytest

from llm_worker.standby import read_assignment

OWN = ["--worker-id", "w-1234abcd"]


def test_an_assignment_is_the_argument_list_for_the_same_worker() -> None:
    args = ["--worker-id", "w-1234abcd", "--model", "/m.gguf", "--port", "8001"]
    assert read_assignment(OWN, json.dumps(args) + "\n") == args


def test_an_empty_line_lets_the_standby_go() -> None:
    assert read_assignment(OWN, "") is None
    assert read_assignment(OWN, "\n") is None


@pytest.mark.parametrize(
    "line",
    [
        json.dumps(["--worker-id", "w-other", "--model", "/m.gguf"]),
        json.dumps(["--model", "/m.gguf"]),
        json.dumps({"worker-id": "w-1234abcd"}),
        json.dumps(["--worker-id", "w-1234abcd", 8001]),
    ],
)
def test_anything_else_is_refused(line: str) -> None:
    with pytest.raises(ValueError):
        read_assignment(OWN, line)


def test_broken_json_is_refused() -> None:
    with pytest.raises(ValueError):
        read_assignment(OWN, "[--worker-id")
