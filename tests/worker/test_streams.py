"""The stream shapes: token chunks spliced from templates are the very bytes a whole-chunk
encoding gives, and a batch of tokens is one write."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest

from llm_worker.engine import Finished
from llm_worker.streams import chat_shape, completion_shape, native_stream, openai_stream
from shared.openai_protocol import chat_chunk, completion_chunk
from shared.sse import encode_data

TEXTS = ["plain", ' "quoted" ', "new\nline", "tab\tand\\slash", "ünïcødé ✓", "\x00\x1f", ""]
FINISHED = Finished(tokens_in=3, tokens_out=2, stop_reason="length", ttft_ms=1.0, decode_ms=2.0)


class Batches:
    def __init__(self, *batches: list[str | Finished]) -> None:
        self._batches = batches

    async def batches(self) -> AsyncIterator[list[str | Finished]]:
        for batch in self._batches:
            yield batch


@pytest.mark.parametrize("text", TEXTS)
def test_spliced_chunks_equal_whole_chunk_encoding(text: str) -> None:
    model = 'a "model" ✓'
    completion = completion_shape("cmpl-1", 17, model)
    assert completion.piece(text) == encode_data(completion_chunk("cmpl-1", 17, model, text))
    chat = chat_shape("chatcmpl-1", 17, model)
    assert chat.piece(text) == encode_data(chat_chunk("chatcmpl-1", 17, model, {"content": text}))


async def test_one_write_per_batch_then_the_end() -> None:
    generation = Batches(["a", "b", "c"], ["d", FINISHED])
    shape = completion_shape("cmpl-1", 17, "m")
    writes = [
        w
        async for w in openai_stream(
            generation, shape, cid="cmpl-1", created=17, model="m", include_usage=True
        )
    ]
    assert len(writes) == 3  # two batches, then [DONE]
    events = [e for w in writes for e in w.split(b"\n\n") if e]
    texts = [json.loads(e[6:])["choices"] for e in events[:-1]]
    assert [c[0]["text"] for c in texts[:5]] == ["a", "b", "c", "d", ""]
    assert texts[4][0]["finish_reason"] == "length" and texts[5] == []  # usage chunk
    assert events[-1] == b"data: [DONE]"


async def test_native_token_events_count_across_batches() -> None:
    generation = Batches(["x", 'y"'], ["z", FINISHED])
    events = [
        json.loads(e[6:])
        async for w in native_stream(generation, job_id="j", worker_id="w", model="m")
        for e in w.split(b"\n\n")
        if e and e != b"data: [DONE]"
    ]
    tokens = [(e["t"], e["i"]) for e in events if e["type"] == "token"]
    assert tokens == [("x", 0), ('y"', 1), ("z", 2)]
    assert [e["type"] for e in events] == ["started", "token", "token", "token", "end"]
