"""The one generation loop, in the three shapes clients read: native events, OpenAI chat
chunks, OpenAI completion chunks. Each stream ends with exactly one terminal event and
`data: [DONE]`; an error after the first byte becomes an error event, never a cut stream.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable, AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

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

Generation = AsyncIterable[str | Finished]


def _as_rbee_error(exc: Exception) -> RbeeError:
    if isinstance(exc, RbeeError):
        return exc
    logger.exception("generation failed", extra={"action": "generation_error"})
    return InternalError()


def finish_reason(finished: Finished) -> FinishReason:
    return "length" if finished.stop_reason == "length" else "stop"


async def native_stream(
    generation: Generation, *, job_id: str, worker_id: str, model: str
) -> AsyncIterator[bytes]:
    yield encode_data({"type": "started", "job_id": job_id, "worker_id": worker_id, "model": model})
    index = 0
    try:
        async for item in generation:
            if isinstance(item, Finished):
                yield encode_data(
                    {
                        "type": "end",
                        "tokens_in": item.tokens_in,
                        "tokens_out": item.tokens_out,
                        "stop_reason": item.stop_reason,
                        "ttft_ms": item.ttft_ms,
                        "decode_ms": item.decode_ms,
                    }
                )
            else:
                yield encode_data({"type": "token", "t": item, "i": index})
                index += 1
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
    """How one OpenAI endpoint words its chunks."""

    object_name: str
    first: Callable[[], dict[str, Any] | None]
    piece: Callable[[str], dict[str, Any]]
    last: Callable[[FinishReason], dict[str, Any]]


def chat_shape(cid: str, created: int, model: str) -> OpenAIShape:
    return OpenAIShape(
        "chat.completion.chunk",
        first=lambda: chat_chunk(cid, created, model, {"role": "assistant", "content": ""}),
        piece=lambda text: chat_chunk(cid, created, model, {"content": text}),
        last=lambda reason: chat_chunk(cid, created, model, {}, reason),
    )


def completion_shape(cid: str, created: int, model: str) -> OpenAIShape:
    return OpenAIShape(
        "text_completion",
        first=lambda: None,
        piece=lambda text: completion_chunk(cid, created, model, text),
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
        async for item in generation:
            if isinstance(item, Finished):
                yield encode_data(shape.last(finish_reason(item)))
                if include_usage:
                    usage = Usage.of(item.tokens_in, item.tokens_out)
                    yield encode_data(usage_chunk(cid, created, model, shape.object_name, usage))
            else:
                yield encode_data(shape.piece(item))
    except Exception as exc:
        yield encode_data(_as_rbee_error(exc).envelope(correlation.current()))
    yield DONE


async def collect(generation: Generation) -> tuple[str, Finished]:
    """The whole answer, for non-streaming requests."""
    pieces: list[str] = []
    async for item in generation:
        if isinstance(item, Finished):
            return "".join(pieces), item
        pieces.append(item)
    raise InternalError("The generation ended without a result.")
