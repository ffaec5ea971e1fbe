"""The native task API: requests and the events of its SSE stream (SPEC section 4).

A stream has zero or more `queued`/`loading` events, one `started`, `token` events, and
exactly one terminal event (`end` or `error`), then `data: [DONE]`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from shared.openai_protocol import ChatMessage
from shared.sampling import SamplingParams

JOB_ID_PATTERN = r"^[A-Za-z0-9._-]{1,128}$"
MAX_PROMPT_CHARS = 1_000_000


class TaskRequest(SamplingParams):
    """`POST /v2/tasks` at the queen."""

    model_config = ConfigDict(extra="forbid")
    model: str = Field(min_length=1, max_length=512)
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    max_tokens: int | None = Field(256, ge=1)
    hive_id: str | None = Field(None, max_length=128)


class InferenceRequest(SamplingParams):
    """`POST /v1/inference` at a worker: a prompt or chat messages, not both."""

    model_config = ConfigDict(extra="forbid")
    job_id: str | None = Field(None, pattern=JOB_ID_PATTERN)
    prompt: str | None = Field(None, max_length=MAX_PROMPT_CHARS)
    messages: list[ChatMessage] | None = Field(None, min_length=1)
    max_tokens: int | None = Field(256, ge=1)


class QueuedEvent(BaseModel):
    type: Literal["queued"] = "queued"
    position: int


class LoadingEvent(BaseModel):
    type: Literal["loading"] = "loading"
    stage: Literal["downloading", "spawning", "loading_model"]
    progress: float = Field(ge=0.0, le=1.0)


class StartedEvent(BaseModel):
    type: Literal["started"] = "started"
    job_id: str
    worker_id: str
    model: str


class TokenEvent(BaseModel):
    type: Literal["token"] = "token"
    t: str
    i: int


StopReason = Literal["stop", "length", "cancelled"]


class EndEvent(BaseModel):
    type: Literal["end"] = "end"
    tokens_in: int
    tokens_out: int
    stop_reason: StopReason
    ttft_ms: float
    decode_ms: float


class ErrorEvent(BaseModel):
    type: Literal["error"] = "error"
    code: str
    message: str
    correlation_id: str | None = None


TaskEvent = Annotated[
    QueuedEvent | LoadingEvent | StartedEvent | TokenEvent | EndEvent | ErrorEvent,
    Field(discriminator="type"),
]
task_event_adapter: TypeAdapter[TaskEvent] = TypeAdapter(TaskEvent)
