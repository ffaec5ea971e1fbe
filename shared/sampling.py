"""Sampling parameters and their limits, shared by the OpenAI and native requests."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field, field_validator

MAX_STOP_STRINGS = 4
MAX_STOP_LENGTH = 100

Temperature = Annotated[float, Field(ge=0.0, le=2.0)]
TopP = Annotated[float, Field(ge=0.0, le=1.0)]
Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]
# Not in OpenAI's API; vLLM and llama.cpp's server take it too. 40 is what llama.cpp's
# server and Ollama use: it keeps the sampler from sorting the whole vocabulary (262,144
# tokens for Gemma 3) at every token. 0 turns it off.
DEFAULT_TOP_K = 40
TopK = Annotated[int, Field(ge=0, le=1_000_000)]


def normalise_stop(value: str | list[str] | None) -> list[str]:
    """`stop` as a list; at most 4 non-empty strings of at most 100 characters."""
    stops = [value] if isinstance(value, str) else list(value or [])
    if len(stops) > MAX_STOP_STRINGS:
        raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings are allowed")
    for stop in stops:
        if not stop:
            raise ValueError("stop strings must not be empty")
        if len(stop) > MAX_STOP_LENGTH:
            raise ValueError(f"stop strings must be at most {MAX_STOP_LENGTH} characters")
    return stops


class SamplingParams(BaseModel):
    """The knobs every generation request has. `max_tokens` is checked against the
    model's context by the worker, which knows it."""

    max_tokens: int | None = Field(None, ge=1)
    temperature: Temperature = 1.0
    top_p: TopP = 1.0
    top_k: TopK = DEFAULT_TOP_K
    seed: int | None = None
    stop: str | list[str] | None = None
    presence_penalty: Penalty = 0.0
    frequency_penalty: Penalty = 0.0

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, value: str | list[str] | None) -> str | list[str] | None:
        normalise_stop(value)
        return value

    @property
    def stop_list(self) -> list[str]:
        return normalise_stop(self.stop)
