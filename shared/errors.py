"""One exception hierarchy for every service, and the JSON envelope it maps to.

Code raises an :class:`RbeeError` subclass; one handler per service turns it into the
envelope of SPEC section 3. Clients turn an envelope back into the same class with
:func:`error_from_envelope`, so an error keeps its identity across hops.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

_TYPE_BY_STATUS: dict[int, str] = {
    401: "authentication_error",
    403: "permission_error",
    429: "rate_limit_error",
}


def error_type(status: int) -> str:
    """OpenAI's error `type` for an HTTP status."""
    if status in _TYPE_BY_STATUS:
        return _TYPE_BY_STATUS[status]
    return "server_error" if status >= 500 else "invalid_request_error"


def safe_text(value: object, limit: int = 80) -> str:
    """Render user input for an error message: no control characters, bounded length."""
    text = _CONTROL.sub("?", str(value))
    return text if len(text) <= limit else text[: limit - 3] + "..."


class RbeeError(Exception):
    """Base of every error a service answers with; `status` and `code` say which."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "INTERNAL_ERROR"
    default_message: ClassVar[str] = "The server hit an internal error; it has been logged."

    def __init__(
        self,
        message: str | None = None,
        *,
        param: str | None = None,
        details: dict[str, Any] | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.message = message or self.default_message
        self.param = param
        self.details = details or {}
        self.retry_after = retry_after
        super().__init__(self.message)

    @property
    def type(self) -> str:
        return error_type(self.status)

    def headers(self) -> dict[str, str]:
        if self.retry_after is None:
            return {}
        return {"Retry-After": str(max(1, round(self.retry_after)))}

    def envelope(self, correlation_id: str | None) -> dict[str, Any]:
        return {
            "error": {
                "code": self.code,
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "correlation_id": correlation_id,
                "details": self.details,
            }
        }


class ValidationError(RbeeError):
    status, code = 400, "VALIDATION_ERROR"
    default_message = "The request is invalid."

    @classmethod
    def from_field_errors(cls, errors: list[dict[str, str]]) -> ValidationError:
        first = errors[0] if errors else {"field": "", "message": "invalid request"}
        field = first["field"] or None
        where = f"Field '{field}'" if field else "The request"
        return cls(
            f"{where} is invalid: {first['message']}",
            param=field,
            details={"errors": errors},
        )


class ContextLengthExceeded(RbeeError):
    status, code = 400, "CONTEXT_LENGTH_EXCEEDED"
    default_message = "The prompt and max_tokens together exceed the model's context length."


class BackendUnavailable(RbeeError):
    status, code = 400, "BACKEND_UNAVAILABLE"
    default_message = "The requested backend or device is not available on this hive."


class MissingApiKey(RbeeError):
    status, code = 401, "MISSING_API_KEY"
    default_message = "Authentication required: send 'Authorization: Bearer <token>'."


class InvalidApiKey(RbeeError):
    status, code = 401, "INVALID_API_KEY"
    default_message = "The token is not valid."


class Forbidden(RbeeError):
    status, code = 403, "FORBIDDEN"
    default_message = "The token's role is not allowed to call this endpoint."


class NotFound(RbeeError):
    status, code = 404, "NOT_FOUND"
    default_message = "No such endpoint or resource."


class ModelNotFound(NotFound):
    code = "MODEL_NOT_FOUND"
    default_message = "The model was not found."


class HiveNotFound(NotFound):
    code = "HIVE_NOT_FOUND"
    default_message = "The hive is not registered."


class WorkerNotFound(NotFound):
    code = "WORKER_NOT_FOUND"
    default_message = "The worker does not exist."


class JobNotFound(NotFound):
    code = "JOB_NOT_FOUND"
    default_message = "The job does not exist."


class Conflict(RbeeError):
    status = 409
    code = "CONFLICT"


class HiveAlreadyExists(Conflict):
    code = "HIVE_ALREADY_EXISTS"
    default_message = "A hive with this id is already registered."


class HiveNotManaged(Conflict):
    code = "HIVE_NOT_MANAGED"
    default_message = (
        "The queen cannot start this hive: it was added by URL, so whoever runs it starts it."
    )


class WorkerAlreadyRegistered(Conflict):
    code = "WORKER_ALREADY_REGISTERED"
    default_message = "This worker is already registered."


class ModelInUse(Conflict):
    code = "MODEL_IN_USE"
    default_message = "The model is in use by a running worker; stop the worker first."


class PayloadTooLarge(RbeeError):
    status, code = 413, "PAYLOAD_TOO_LARGE"
    default_message = "The request body is too large."


class RateLimited(RbeeError):
    status, code = 429, "RATE_LIMITED"
    default_message = "Too many requests; retry later."


class UpstreamError(RbeeError):
    status = 502
    code = "UPSTREAM_ERROR"


class WorkerFailed(UpstreamError):
    code = "WORKER_FAILED"
    default_message = "The worker failed while serving the request."


class DownloadFailed(UpstreamError):
    code = "DOWNLOAD_FAILED"
    default_message = "The model download failed."


class ChecksumMismatch(UpstreamError):
    code = "CHECKSUM_MISMATCH"
    default_message = "The downloaded file does not match its expected sha256."


class HiveUnreachable(UpstreamError):
    code = "HIVE_UNREACHABLE"
    default_message = "The hive did not answer."


class Unavailable(RbeeError):
    status = 503
    code = "UNAVAILABLE"


class AllSlotsBusy(Unavailable):
    code = "ALL_SLOTS_BUSY"
    default_message = "Every slot of this worker is busy; retry shortly."


class NoCapacity(Unavailable):
    code = "NO_CAPACITY"
    default_message = "No capacity to serve this model right now; retry later."


class InsufficientResource(Unavailable):
    """Preflight refused: `details` carries `required_bytes` and `available_bytes`."""

    resource: ClassVar[str] = "memory"

    @classmethod
    def of(cls, required: int, available: int) -> InsufficientResource:
        gib = 1024**3
        return cls(
            f"Not enough {cls.resource}: {required / gib:.2f} GiB required, "
            f"{available / gib:.2f} GiB available.",
            details={"required_bytes": required, "available_bytes": available},
        )


class InsufficientRam(InsufficientResource):
    code, resource = "INSUFFICIENT_RAM", "RAM"


class InsufficientVram(InsufficientResource):
    code, resource = "INSUFFICIENT_VRAM", "VRAM"


class InsufficientDisk(InsufficientResource):
    code, resource = "INSUFFICIENT_DISK", "disk space"


class ShuttingDown(Unavailable):
    code = "SHUTTING_DOWN"
    default_message = "The service is shutting down and takes no new work."


class WorkerLoading(Unavailable):
    code = "WORKER_LOADING"
    default_message = "The worker is still loading its model; retry shortly."


class DeadlineExceeded(RbeeError):
    status, code = 504, "DEADLINE_EXCEEDED"
    default_message = "The request's deadline passed before it finished."


class DownloadTimeout(RbeeError):
    status, code = 504, "DOWNLOAD_TIMEOUT"
    default_message = "The download stalled on every attempt."


class InternalError(RbeeError):
    status, code = 500, "INTERNAL_ERROR"


def _all_subclasses(cls: type[RbeeError]) -> list[type[RbeeError]]:
    found: list[type[RbeeError]] = []
    for sub in cls.__subclasses__():
        found.append(sub)
        found.extend(_all_subclasses(sub))
    return found


_ALL_ERRORS: list[type[RbeeError]] = [RbeeError, *_all_subclasses(RbeeError)]
ERRORS_BY_CODE: dict[str, type[RbeeError]] = {cls.code: cls for cls in _ALL_ERRORS}


def error_from_envelope(status: int, body: object) -> RbeeError:
    """Rebuild the typed error from an envelope another service sent."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return UpstreamError(f"Upstream answered HTTP {status} without an error envelope.")
    cls = ERRORS_BY_CODE.get(str(error.get("code")), RbeeError)
    details = error.get("details")
    exc = cls(
        str(error.get("message") or cls.default_message),
        param=error.get("param"),
        details=details if isinstance(details, dict) else {},
    )
    if cls is RbeeError or cls.status != status:
        # An unknown code keeps the status it came with.
        exc.status = status  # type: ignore[misc]
        exc.code = str(error.get("code") or "UPSTREAM_ERROR")  # type: ignore[misc]
    return exc
