"""The one generation loop, in the three shapes clients read: native events, OpenAI chat
chunks, OpenAI completion chunks. Each stream ends with exactly one terminal event and
`data: [DONE]`; an error after the first byte becomes an error event, never a cut stream.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from llm_worker.engine import Finished
from shared import correlation
from shared.errors import InternalError, RbeeError
from shared.openai_protocol import (
    FinishReason,
    Usage,
    chat_chunk,
    completion_chunk,
    usage_chunk,
)
from shared.sse import DONE, encode_data

logger = logging.getLogger(__name__)


class Generation(Protocol):
    def batches(self) -> AsyncIterator[list[str | Finished]]: ...


def _as_rbee_error(exc: Exception) -> RbeeError:
    if isinstance(exc, RbeeError):
        return exc
    logger.exception("generation failed", extra={"action": "generation_error"})
    return InternalError()


def finish_reason(finished: Finished) -> FinishReason:
    return "length" if finished.stop_reason == "length" else "stop"


def _text(text: str) -> bytes:
    return json.dumps(text, ensure_ascii=False).encode()


async def native_stream(
    generation: Generation, *, job_id: str, worker_id: str, model: str
) -> AsyncIterator[bytes]:
    yield encode_data({"type": "started", "job_id": job_id, "worker_id": worker_id, "model": model})
    index = 0
    try:
        async for batch in generation.batches():
            out = []
            for item in batch:
                if isinstance(item, Finished):
                    out.append(
                        encode_data(
                            {
                                "type": "end",
                                "tokens_in": item.tokens_in,
                                "tokens_out": item.tokens_out,
                                "stop_reason": item.stop_reason,
                                "ttft_ms": item.ttft_ms,
                                "decode_ms": item.decode_ms,
                            }
                        )
                    )
                else:
                    out.append(b'data: {"type":"token","t":%b,"i":%d}\n\n' % (_text(item), index))
                    index += 1
            yield b"".join(out)
    except Exception as exc:
        error = _as_rbee_error(exc)
        yield encode_data(
            {
                "type": "error",
                "code": error.code,
                "message": error.message,
                "correlation_id": correlation.current(),
            }
        )
    yield DONE


@dataclass(frozen=True)
class OpenAIShape:
    """How one OpenAI endpoint words its chunks. Token chunks are the bytes of the full
    chunk with the text spliced between a prefix and a suffix encoded once per stream:
    a token costs one `json.dumps` of its text, not of a whole chunk."""

    object_name: str
    first: Callable[[], dict[str, Any] | None]
    piece_prefix: bytes
    piece_suffix: bytes
    last: Callable[[FinishReason], dict[str, Any]]

    def piece(self, text: str) -> bytes:
        return self.piece_prefix + _text(text) + self.piece_suffix


def _split_at_text(chunk: dict[str, Any]) -> tuple[bytes, bytes]:
    """The encoded `chunk`, cut where its text (the marker) goes."""
    encoded = encode_data(chunk)
    marker = _text(_MARKER)
    at = encoded.index(marker)
    return encoded[:at], encoded[at + len(marker) :]


_MARKER = "\x00text\x00"


def chat_shape(cid: str, created: int, model: str) -> OpenAIShape:
    prefix, suffix = _split_at_text(chat_chunk(cid, created, model, {"content": _MARKER}))
    return OpenAIShape(
        "chat.completion.chunk",
        first=lambda: chat_chunk(cid, created, model, {"role": "assistant", "content": ""}),
        piece_prefix=prefix,
        piece_suffix=suffix,
        last=lambda reason: chat_chunk(cid, created, model, {}, reason),
    )


def completion_shape(cid: str, created: int, model: str) -> OpenAIShape:
    prefix, suffix = _split_at_text(completion_chunk(cid, created, model, _MARKER))
    return OpenAIShape(
        "text_completion",
        first=lambda: None,
        piece_prefix=prefix,
        piece_suffix=suffix,
        last=lambda reason: completion_chunk(cid, created, model, "", reason),
    )


async def openai_stream(
    generation: Generation,
    shape: OpenAIShape,
    *,
    cid: str,
    created: int,
    model: str,
    include_usage: bool,
) -> AsyncIterator[bytes]:
    first = shape.first()
    if first is not None:
        yield encode_data(first)
    try:
        async for batch in generation.batches():
            out = []
            for item in batch:
                if isinstance(item, Finished):
                    out.append(encode_data(shape.last(finish_reason(item))))
                    if include_usage:
                        usage = Usage.of(item.tokens_in, item.tokens_out)
                        chunk = usage_chunk(cid, created, model, shape.object_name, usage)
                        out.append(encode_data(chunk))
                else:
                    out.append(shape.piece(item))
            yield b"".join(out)
    except Exception as exc:
        yield encode_data(_as_rbee_error(exc).envelope(correlation.current()))
    yield DONE


async def collect(generation: Generation) -> tuple[str, Finished]:
    """The whole answer, for non-streaming requests."""
    pieces: list[str] = []
    async for batch in generation.batches():
        for item in batch:
            if isinstance(item, Finished):
                return "".join(pieces), item
            pieces.append(item)
    raise InternalError("The generation ended without a result.")
