"""Request deadlines: `X-Request-Deadline` (RFC 3339), passed on unchanged, never extended."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from shared.errors import ValidationError

HEADER = "X-Request-Deadline"


def parse_deadline(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValidationError(
            f"Header {HEADER} must be an RFC 3339 timestamp.", param=HEADER
        ) from None
    if parsed.tzinfo is None:
        raise ValidationError(f"Header {HEADER} must include a time zone.", param=HEADER)
    return parsed


def format_deadline(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def seconds_left(deadline: datetime) -> float:
    return deadline.timestamp() - time.time()
