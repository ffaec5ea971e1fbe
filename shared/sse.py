"""Server-sent events: encoding on the serving side, parsing on the client side.

The wire format is the subset OpenAI uses: `data: <json>` events separated by a blank
line, `: comment` lines as keep-alives, and a literal `data: [DONE]` at the end.
Encoding produces bytes once, so a relay can pass them on without re-encoding.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx

DONE = b"data: [DONE]\n\n"
SSE_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}


def encode_data(payload: Any) -> bytes:
    """One `data:` event holding `payload` as compact JSON."""
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    return b"data: " + body.encode() + b"\n\n"


def encode_comment(text: str) -> bytes:
    """A comment line: ignored by clients, keeps proxies and idle timers from closing."""
    return b": " + text.replace("\n", " ").encode() + b"\n\n"


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One parsed event: `data` is the raw text; `comment` is set for comment lines."""

    data: str | None = None
    comment: str | None = None

    @property
    def is_done(self) -> bool:
        return self.data == "[DONE]"

    def json(self) -> Any:
        if self.data is None:
            raise ValueError("a comment has no data")
        return json.loads(self.data)


class SSEParser:
    """Incremental parser: feed it text chunks, get complete events back."""

    def __init__(self) -> None:
        self._buffer = ""
        self._data: list[str] = []

    def feed(self, chunk: str) -> list[SSEEvent]:
        self._buffer += chunk
        events: list[SSEEvent] = []
        while True:
            newline = self._buffer.find("\n")
            if newline < 0:
                return events
            line = self._buffer[:newline].rstrip("\r")
            self._buffer = self._buffer[newline + 1 :]
            event = self._line(line)
            if event is not None:
                events.append(event)

    def _line(self, line: str) -> SSEEvent | None:
        if line == "":
            if not self._data:
                return None
            data, self._data = "\n".join(self._data), []
            return SSEEvent(data=data)
        if line.startswith(":"):
            return SSEEvent(comment=line[1:].strip())
        field, _, value = line.partition(":")
        if field == "data":
            self._data.append(value[1:] if value.startswith(" ") else value)
        return None


async def iter_sse(response: httpx.Response) -> AsyncIterator[SSEEvent]:
    """Events of a streaming httpx response, comments included, up to the stream's end."""
    parser = SSEParser()
    async for chunk in response.aiter_text():
        for event in parser.feed(chunk):
            yield event
