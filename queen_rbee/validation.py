"""Request bodies parsed from raw bytes, so the relay can pass the same bytes on.

The OpenAI routes read the body once, validate it with the shared pydantic models, and
forward the original bytes to the worker (no re-encoding). Failures become the same
400 `VALIDATION_ERROR` that FastAPI's own validation gives elsewhere.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

import pydantic
from fastapi import Request
from fastapi.exceptions import RequestValidationError

from shared.errors import Forbidden, ValidationError
from shared.hives import HIVE_ID_MAX_LENGTH, HIVE_ID_PATTERN
from shared.modelref import ModelRef, parse_model_ref
from shared.service.errors import validation_error

M = TypeVar("M", bound=pydantic.BaseModel)


def parse_body(raw: bytes, model: type[M]) -> M:
    if not raw.strip():
        raise ValidationError(
            "The request body is empty; send a JSON object.",
            details={"errors": [{"field": "", "message": "body required"}]},
        )
    try:
        return model.model_validate_json(raw)
    except pydantic.ValidationError as exc:
        raise validation_error(RequestValidationError(exc.errors())) from None


_HIVE_ID: pydantic.TypeAdapter[str] = pydantic.TypeAdapter(
    Annotated[str, pydantic.Field(pattern=HIVE_ID_PATTERN, max_length=HIVE_ID_MAX_LENGTH)]
)


def hive_id_of(request: Request) -> str:
    """The `{hive_id}` of the path, checked as FastAPI checks it on the other routes."""
    try:
        return _HIVE_ID.validate_python(request.path_params["hive_id"])
    except pydantic.ValidationError as exc:
        errors = [{**e, "loc": ("path", "hive_id")} for e in exc.errors()]
        raise validation_error(RequestValidationError(errors)) from None


def check_model_name(name: str, *, operator: bool) -> ModelRef:
    """A catalog alias or a model reference; `file:` references are for operators only."""
    ref = parse_model_ref(name, param="model")
    if ref.kind == "file" and not operator:
        raise Forbidden("Only operators may name a model by a file: reference.")
    return ref


def body_of(model: type[M]) -> Callable[[Request], Awaitable[M]]:
    """A dependency that parses the raw body into `model` with rbee's error envelope."""

    async def parse(request: Request) -> M:
        return parse_body(await request.body(), model)

    return parse


def optional_body_of(model: type[M]) -> Callable[[Request], Awaitable[M]]:
    """Like :func:`body_of`, but an empty body means the model's defaults."""

    async def parse(request: Request) -> M:
        raw = await request.body()
        return parse_body(raw, model) if raw.strip() else model()

    return parse
