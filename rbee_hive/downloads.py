"""One HTTP download attempt into a `.part` file, resuming with `Range`.

An attempt appends to the `.part` file from where it stopped (an interrupted attempt or a
previous hive), checks free disk before writing, and reports progress through a callback.
It raises :class:`Retryable` for what another attempt may fix (dropped connection, 5xx, a
stall longer than the stall timeout) and a final :class:`RbeeError` for what it cannot
(404 -> MODEL_NOT_FOUND, 401/403, other 4xx, no disk space). The retry policy lives in the
provisioner. Writes go through a thread so a slow disk never blocks the event loop.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import httpx

from shared.errors import DownloadFailed, InsufficientDisk, ModelNotFound

DISK_MARGIN = 1.1
_CONTENT_RANGE = re.compile(r"bytes (?:(\d+)-(\d+)|\*)/(\d+|\*)")

Progress = Callable[[int, int | None], None]


class Retryable(Exception):
    """A failed attempt that another attempt may fix; `stalled` for timeouts."""

    def __init__(self, reason: str, *, stalled: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.stalled = stalled


def file_size(path: Path) -> int:
    """Size of a file, 0 when absent (a cheap stat)."""
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0


def check_disk(directory: Path, needed: int) -> None:
    """Refuse when free space is below `needed` + 10 %."""
    required = int(needed * DISK_MARGIN)
    free = shutil.disk_usage(directory).free
    if free < required:
        raise InsufficientDisk.of(required, free)


def _status_error(status: int, source: str) -> Exception:
    if status == 404:
        return ModelNotFound(f"The {source} has no such file (HTTP 404); check the reference.")
    if status in (401, 403):
        hint = (
            "set HF_TOKEN to a token that may read this repository"
            if source == "Hugging Face Hub"
            else "the URL needs credentials or is not public"
        )
        return DownloadFailed(f"The {source} refused access (HTTP {status}): {hint}.")
    if status == 429 or status >= 500:
        return Retryable(f"the {source} answered HTTP {status}")
    return DownloadFailed(f"The {source} answered HTTP {status}; the download cannot proceed.")


def _total_size(response: httpx.Response, offset: int) -> int | None:
    match = _CONTENT_RANGE.fullmatch(response.headers.get("content-range", ""))
    if match and match.group(3) != "*":
        return int(match.group(3))
    length = response.headers.get("content-length")
    return offset + int(length) if length and length.isdigit() else None


async def _write_body(
    response: httpx.Response, part: Path, offset: int, total: int | None, progress: Progress
) -> int:
    done = offset
    with part.open("ab" if offset else "wb") as file:
        async for chunk in response.aiter_bytes():  # as it arrives: a cut loses nothing
            await asyncio.to_thread(file.write, chunk)
            done += len(chunk)
            progress(done, total)
    return done


async def fetch(
    client: httpx.AsyncClient,
    url: str,
    part: Path,
    *,
    headers: dict[str, str],
    stall_timeout_s: float,
    progress: Progress,
    source: str = "server",
) -> int:
    """One attempt; returns the size of the complete `.part` file."""
    offset = file_size(part)
    request_headers = {**headers, **({"Range": f"bytes={offset}-"} if offset else {})}
    try:
        async with client.stream(
            "GET",
            url,
            headers=request_headers,
            timeout=httpx.Timeout(stall_timeout_s),
            follow_redirects=True,
        ) as response:
            if response.status_code == 416 and offset:
                os.unlink(part)  # our .part is not a prefix of the file
                raise Retryable("the server refused to resume; starting over")
            if not response.is_success:
                raise _status_error(response.status_code, source)
            if response.status_code != 206:
                offset = 0  # the server ignored Range: start over
            total = _total_size(response, offset)
            if total is not None:
                check_disk(part.parent, total - offset)
            progress(offset, total)
            done = await _write_body(response, part, offset, total, progress)
    except httpx.TimeoutException:
        raise Retryable(f"no data for {stall_timeout_s:g} s", stalled=True) from None
    except httpx.TransportError as exc:
        raise Retryable(f"the connection broke ({type(exc).__name__})") from None
    if total is not None and done != total:
        raise Retryable(f"the body ended after {done} of {total} bytes")
    return done
