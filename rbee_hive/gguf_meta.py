"""GGUF metadata for the catalog, read with the `gguf` package (blocking; run in a thread)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

GGUF_MAGIC = b"GGUF"


@dataclass(frozen=True)
class GgufMeta:
    architecture: str | None
    context_length: int | None
    parameter_count: int | None
    size: int


class NotGguf(ValueError):
    """The file is not a readable GGUF model."""


def _field(fields: dict[str, Any], key: str) -> Any:
    field = fields.get(key)
    if field is None:
        return None
    try:
        return field.contents()
    except (AttributeError, IndexError, ValueError):
        return None


def looks_like_gguf(path: Path) -> bool:
    try:
        with path.open("rb") as file:
            return file.read(4) == GGUF_MAGIC
    except OSError:
        return False


def read_meta(path: Path) -> GgufMeta:
    from gguf import GGUFReader

    if not looks_like_gguf(path):
        raise NotGguf("the file does not start with the GGUF magic bytes")
    try:
        reader = GGUFReader(path)
    except Exception as exc:  # gguf raises assorted errors on corrupt files
        raise NotGguf(f"the GGUF header could not be read ({type(exc).__name__})") from None
    arch = _field(reader.fields, "general.architecture")
    ctx = _field(reader.fields, f"{arch}.context_length") if arch else None
    params = _field(reader.fields, "general.parameter_count")
    if params is None:
        params = sum(int(t.n_elements) for t in reader.tensors)
    return GgufMeta(
        architecture=str(arch) if arch is not None else None,
        context_length=int(ctx) if ctx is not None else None,
        parameter_count=int(params),
        size=path.stat().st_size,
    )
