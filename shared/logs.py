"""Structured logging: one JSON object per line on stderr.

Every record carries `ts`, `level`, `service`, `action` and `msg`, plus the request's
correlation id and whatever ids the caller passed in `extra` (`job_id`, `worker_id`,
`hive_id`, `model`). Configured once, by each service's `__main__`.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Literal

from shared import correlation

CONTEXT_FIELDS = ("job_id", "worker_id", "hive_id", "model", "path", "pid", "port")


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "service": self.service,
            "action": getattr(record, "action", record.name),
            "msg": record.getMessage(),
        }
        cid = getattr(record, "correlation_id", None) or correlation.current()
        if cid:
            entry["correlation_id"] = cid
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__(f"%(asctime)s %(levelname)-7s {service} %(message)s")


def configure_logging(
    service: str, fmt: Literal["json", "text"] = "json", level: str = "info"
) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service) if fmt == "json" else TextFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Access logs would repeat every request; our own lines carry what matters.
    logging.getLogger("uvicorn.access").disabled = True
    for name in ("httpx", "httpcore", "asyncssh", "aiosqlite"):
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
