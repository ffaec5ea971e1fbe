"""Every error, from any layer, leaves a service as the JSON envelope of SPEC section 3.

FastAPI's 422 becomes 400 VALIDATION_ERROR with `details.errors`, an unknown route 404
NOT_FOUND, a wrong method 405; anything unexpected is logged with its traceback and
answered 500 INTERNAL_ERROR without one.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared import correlation
from shared.auth import error_response_messages
from shared.errors import (
    InternalError,
    NotFound,
    PayloadTooLarge,
    RbeeError,
    ValidationError,
    safe_text,
)

logger = logging.getLogger(__name__)


def error_response(exc: RbeeError) -> JSONResponse:
    return JSONResponse(
        exc.envelope(correlation.current()), status_code=exc.status, headers=exc.headers()
    )


def _field_path(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    # pydantic names union members ("str", "list[...]") and function validators in loc.
    parts = [p for p in parts if not p.startswith(("function-", "list[", "str", "int"))]
    return ".".join(parts)


def _clean_message(message: str) -> str:
    return message.removeprefix("Value error, ")


def validation_error(exc: RequestValidationError) -> ValidationError:
    errors = []
    for err in exc.errors():
        if err.get("type") == "json_invalid":
            return ValidationError(
                "The request body is not valid JSON.",
                details={"errors": [{"field": "", "message": "invalid JSON"}]},
            )
        errors.append(
            {"field": _field_path(tuple(err["loc"])), "message": _clean_message(str(err["msg"]))}
        )
    return ValidationError.from_field_errors(errors)


async def _on_rbee_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RbeeError)
    return error_response(exc)


async def _on_validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return error_response(validation_error(exc))


async def _on_http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 404:
        path = safe_text(request.url.path)
        return error_response(NotFound(f"No route for {request.method} {path}."))
    if exc.status_code == 405:
        err = RbeeError(f"Method {request.method} is not allowed here.")
        err.status, err.code = 405, "METHOD_NOT_ALLOWED"  # type: ignore[misc]
        return error_response(err)
    if exc.status_code == 413:
        return error_response(PayloadTooLarge())
    err = RbeeError(str(exc.detail))
    err.status, err.code = exc.status_code, "HTTP_ERROR"  # type: ignore[misc]
    return error_response(err)


class UnexpectedErrorMiddleware:
    """Pure ASGI, inside the correlation middleware: a bug becomes a logged traceback and
    a 500 envelope that still carries the request's correlation id."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: dict[str, Any]) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            logger.exception(
                "unhandled error on %s %s",
                scope["method"],
                scope["path"],
                extra={"action": "internal_error"},
            )
            if not started:
                for message in error_response_messages(InternalError()):
                    await send(message)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RbeeError, _on_rbee_error)
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(StarletteHTTPException, _on_http)
