"""Which worker bytes are preamble: held back so a worker that dies before output fails over."""

from __future__ import annotations

import pytest

from queen_rbee.relay import only_preamble
from shared.openai_protocol import chat_chunk, completion_chunk
from shared.sse import DONE, encode_comment, encode_data

ROLE = encode_data(chat_chunk("c", 0, "m", {"role": "assistant", "content": ""}))
STARTED = encode_data({"type": "started", "job_id": "j", "worker_id": "w", "model": "m"})


@pytest.mark.parametrize(
    ("data", "held"),
    [
        (ROLE, True),
        (STARTED, True),
        (encode_comment("keep-alive"), True),
        (ROLE + b'data: {"id":"c","choi', True),  # the next event is not complete yet
        (ROLE + encode_data(chat_chunk("c", 0, "m", {"content": " Hi"})), False),
        (ROLE + encode_data(chat_chunk("c", 0, "m", {}, "length")), False),
        (STARTED + encode_data({"type": "token", "t": " Hi", "i": 0}), False),
        (STARTED + encode_data({"type": "error", "code": "X", "message": "m"}), False),
        (encode_data(completion_chunk("c", 0, "m", " Hi")), False),
        (encode_data({"error": {"code": "WORKER_FAILED"}}), False),
        (ROLE + DONE, False),
        (b"data: not json\n\n", False),
    ],
)
def test_only_output_ends_the_preamble(data: bytes, held: bool) -> None:
    assert only_preamble(data) is held
