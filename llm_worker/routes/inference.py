"""Generation endpoints: native `POST /v1/inference` and the OpenAI shapes.

Everything cheap is validated before a stream starts (state, slots, context length), so
those failures are proper HTTP errors; after the first byte they become error events.
"""

from __future__ import annotations

import asyncio
import base64
import struct
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from llm_worker.deps import RuntimeDep, SettingsDep
from llm_worker.disconnect import ClientGone, unless_disconnected
from llm_worker.engine import GenerationParams
from llm_worker.prompts import chat_tokens, completion_tokens, generation_params
from llm_worker.runtime import Job, WorkerRuntime
from llm_worker.streams import (
    OpenAIShape,
    chat_shape,
    collect,
    completion_shape,
    finish_reason,
    native_stream,
    openai_stream,
)
from shared.deadlines import HEADER as DEADLINE_HEADER
from shared.deadlines import parse_deadline, seconds_left
from shared.errors import DeadlineExceeded, ValidationError
from shared.openai_protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    FinishReason,
    Usage,
    chat_completion,
    new_id,
    now,
    text_completion,
)
from shared.sampling import SamplingParams
from shared.service.streaming import SSEResponse
from shared.tasks import InferenceRequest

router = APIRouter()
JOB_HEADER = "X-Rbee-Job-Id"


def _loop_deadline(request: Request) -> float | None:
    deadline: datetime | None = parse_deadline(request.headers.get(DEADLINE_HEADER))
    if deadline is None:
        return None
    left = seconds_left(deadline)
    if left <= 0:
        raise DeadlineExceeded("The request's deadline had already passed when it arrived.")
    return asyncio.get_running_loop().time() + left


def _start(
    runtime: WorkerRuntime,
    job_id: str,
    tokens: list[int],
    sampling: SamplingParams,
    max_tokens: int | None,
) -> tuple[Job, GenerationParams]:
    budget = runtime.check_fits(len(tokens), max_tokens)
    job = runtime.acquire(job_id)
    return job, generation_params(sampling, tokens, budget)


def _job_id(request: Request, given: str | None = None) -> str:
    return given or request.headers.get(JOB_HEADER) or uuid.uuid4().hex


@router.post("/v1/inference")
async def inference(
    body: InferenceRequest, request: Request, runtime: RuntimeDep, settings: SettingsDep
) -> SSEResponse:
    model = runtime.check_accepting()
    if (body.prompt is None) == (body.messages is None):
        raise ValidationError(
            "Send either 'prompt' or 'messages', not both or neither.", param="prompt"
        )
    deadline = _loop_deadline(request)
    tokens = (
        completion_tokens(model, body.prompt)
        if body.prompt is not None
        else chat_tokens(model, body.messages or [])
    )
    job_id = _job_id(request, body.job_id)
    job, params = _start(runtime, job_id, tokens, body, body.max_tokens)
    generation = runtime.generate(job, params, deadline)
    stream = native_stream(
        generation, job_id=job_id, worker_id=settings.worker_id, model=settings.effective_model_ref
    )
    return SSEResponse(stream, on_close=generation.cancel)


@router.delete("/v1/inference/{job_id}", status_code=204)
async def cancel(job_id: str, runtime: RuntimeDep) -> Response:
    runtime.cancel(job_id)
    return Response(status_code=204)


@dataclass(frozen=True)
class _OpenAIFormat:
    """What tells a chat completion from a text completion: ids, chunks, the final body."""

    id_prefix: str
    shape: Callable[[str, int, str], OpenAIShape]
    body: Callable[[str, int, str, str, FinishReason, Usage], dict[str, Any]]


_CHAT = _OpenAIFormat("chatcmpl", chat_shape, chat_completion)
_TEXT = _OpenAIFormat("cmpl", completion_shape, text_completion)


@router.post("/v1/chat/completions", response_model=None)
async def chat_completions(
    body: ChatCompletionRequest, request: Request, runtime: RuntimeDep
) -> Response:
    model = runtime.check_accepting()
    deadline = _loop_deadline(request)
    tokens = chat_tokens(model, body.messages)
    return await _openai_response(request, runtime, body, tokens, deadline, _CHAT)


@router.post("/v1/completions", response_model=None)
async def completions(body: CompletionRequest, request: Request, runtime: RuntimeDep) -> Response:
    model = runtime.check_accepting()
    deadline = _loop_deadline(request)
    tokens = completion_tokens(model, body.prompt_text)
    echo = body.prompt_text if body.echo else ""
    return await _openai_response(request, runtime, body, tokens, deadline, _TEXT, echo)


async def _openai_response(
    request: Request,
    runtime: WorkerRuntime,
    body: ChatCompletionRequest | CompletionRequest,
    tokens: list[int],
    deadline: float | None,
    form: _OpenAIFormat,
    echo: str = "",
) -> Response:
    job, params = _start(runtime, _job_id(request), tokens, body, body.token_limit)
    cid, created = new_id(form.id_prefix), now()
    generation = runtime.generate(job, params, deadline)
    if body.stream:
        stream = openai_stream(
            generation,
            form.shape(cid, created, body.model),
            cid=cid,
            created=created,
            model=body.model,
            include_usage=body.include_usage,
        )
        return SSEResponse(stream, on_close=generation.cancel)
    try:
        text, finished = await unless_disconnected(request, collect(generation))
    except ClientGone:
        return Response(status_code=499)
    finally:
        generation.cancel()
    usage = Usage.of(finished.tokens_in, finished.tokens_out)
    return JSONResponse(
        form.body(cid, created, body.model, echo + text, finish_reason(finished), usage)
    )


@router.post("/v1/embeddings")
async def embeddings(body: EmbeddingRequest, runtime: RuntimeDep) -> JSONResponse:
    vectors, n_tokens = await runtime.embed(body.inputs)
    encode = _base64_floats if body.encoding_format == "base64" else list
    return JSONResponse(
        {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": encode(v)}
                for i, v in enumerate(vectors)
            ],
            "model": body.model,
            "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens},
        }
    )


def _base64_floats(vector: list[float]) -> str:
    """OpenAI's base64 format: little-endian float32s (what the SDK asks for by default)."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
