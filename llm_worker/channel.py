"""Hand-off from the generation thread to the event loop.

The thread appends to a deque and wakes the loop at most once per batch: when tokens come
faster than the loop runs, one wake-up carries all of them, so a fast model costs one
`call_soon_threadsafe` per loop iteration rather than one per token.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class Channel(Generic[T]):
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._items: deque[T] = deque()
        self._lock = threading.Lock()
        self._ready = asyncio.Event()
        self._wake_pending = False

    def put(self, item: T) -> None:
        """Called from the producing thread."""
        with self._lock:
            self._items.append(item)
            if self._wake_pending:
                return
            self._wake_pending = True
        self._loop.call_soon_threadsafe(self._ready.set)

    async def take_all(self) -> list[T]:
        """Everything put since the last call; waits until there is something."""
        while True:
            await self._ready.wait()
            with self._lock:
                self._ready.clear()
                self._wake_pending = False
                items = list(self._items)
                self._items.clear()
            if items:
                return items
