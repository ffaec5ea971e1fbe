"""Turning token bytes into text as they come, with constant work per token.

A token's piece may end in the middle of a UTF-8 sequence (byte-fallback vocabularies
split emoji and CJK into several tokens): the incremental decoder holds those bytes back
until the character is complete. Stop strings are matched incrementally too: text that
could still become the start of a stop string is held back, and released as soon as it
cannot; nothing past a stop string is ever emitted.
"""

from __future__ import annotations

import codecs


class Utf8Stream:
    """Bytes in, complete characters out; invalid bytes become U+FFFD."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, piece: bytes) -> str:
        return self._decoder.decode(piece)

    def flush(self) -> str:
        return self._decoder.decode(b"", final=True)


class StopMatcher:
    """Feeds text through, cutting at the first stop string.

    `push` returns (text safe to emit, stopped). Work per call is bounded by the longest
    stop string, not by the length of the output so far.
    """

    def __init__(self, stops: list[str]) -> None:
        self._stops = [s for s in stops if s]
        self._longest = max((len(s) for s in self._stops), default=0)
        self._held = ""
        self.stopped = False

    def push(self, text: str) -> tuple[str, bool]:
        if self.stopped:
            return "", True
        if not self._stops:
            return text, False
        window = self._held + text
        cut = min((i for i in (window.find(s) for s in self._stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped, self._held = True, ""
            return window[:cut], True
        keep = self._partial_suffix(window)
        self._held = window[len(window) - keep :] if keep else ""
        return window[: len(window) - keep], False

    def _partial_suffix(self, window: str) -> int:
        """Length of the longest suffix of `window` that is a proper prefix of a stop."""
        for size in range(min(len(window), self._longest - 1), 0, -1):
            tail = window[-size:]
            if any(stop.startswith(tail) for stop in self._stops):
                return size
        return 0

    def flush(self) -> str:
        held, self._held = self._held, ""
        return "" if self.stopped else held
