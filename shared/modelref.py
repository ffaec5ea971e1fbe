"""Model references: what a client may name, checked before anything touches disk.

Accepted forms: a catalog alias (`gemma3-270m`), `hf:<org>/<repo>[:<file.gguf>]`,
`http(s)://host/.../<file>.gguf[#sha256=<hex>]`, and `file:/<abs path>.gguf`.
References are ASCII, at most 512 bytes, with no control characters, whitespace, shell
metacharacters or `..` segments. :func:`parse_model_ref` raises a ValidationError whose
message says what is wrong.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from shared.errors import ValidationError

MAX_REF_BYTES = 512
_SHELL_META = set(";|&$`<>(){}[]!*?'\"\\~^")
_ALIAS = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_HF_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_SHA256 = re.compile(r"[0-9a-f]{64}")

Kind = Literal["alias", "hf", "url", "file"]


@dataclass(frozen=True)
class ModelRef:
    raw: str
    kind: Kind
    repo: str | None = None  # hf: org/repo
    filename: str | None = None  # hf: file inside the repo; url/file: basename
    url: str | None = None
    path: str | None = None
    sha256: str | None = None

    @property
    def slug(self) -> str:
        """A catalog id (`[a-z0-9._-]`) derived from the reference."""
        if self.kind == "alias":
            return self.raw.lower()
        base = {
            "hf": f"{self.repo}-{self.filename or ''}",
            "url": self.filename,
            "file": self.filename,
        }[self.kind] or self.raw
        slug = re.sub(r"[^a-z0-9._-]+", "-", base.lower()).strip("-.")
        return slug.removesuffix(".gguf")[:120] or "model"


def _invalid(reason: str, param: str) -> ValidationError:
    return ValidationError(f"Invalid model reference: {reason}", param=param)


def _check_characters(ref: str, param: str) -> None:
    if not ref:
        raise _invalid("it is empty", param)
    if "\x00" in ref:
        raise _invalid("contains null bytes", param)
    if any(ord(c) < 32 or ord(c) == 127 for c in ref):
        raise _invalid("contains control characters", param)
    if not ref.isascii():
        raise _invalid("contains non-ASCII characters", param)
    if len(ref.encode()) > MAX_REF_BYTES:
        raise _invalid(f"longer than {MAX_REF_BYTES} bytes", param)
    if any(c.isspace() for c in ref):
        raise _invalid("contains whitespace", param)
    bad = sorted({c for c in ref if c in _SHELL_META} - {"#"})
    if bad:
        raise _invalid(f"contains shell metacharacter {bad[0]!r}", param)
    if any(seg == ".." for seg in re.split(r"[/:\\]", ref)):
        raise _invalid("contains a '..' segment", param)


def parse_model_ref(ref: str, *, param: str = "model") -> ModelRef:
    _check_characters(ref, param)
    if ref.startswith("hf:"):
        return _parse_hf(ref, param)
    if ref.startswith(("http://", "https://")):
        return _parse_url(ref, param)
    if ref.startswith("file:"):
        return _parse_file(ref, param)
    if _ALIAS.fullmatch(ref):
        return ModelRef(raw=ref, kind="alias")
    raise _invalid("not an alias, hf:, http(s):// or file: reference", param)


def _parse_hf(ref: str, param: str) -> ModelRef:
    body = ref[3:]
    repo, _, filename = body.partition(":")
    parts = repo.split("/")
    if len(parts) != 2 or not all(_HF_PART.fullmatch(p) for p in parts):
        raise _invalid("hf: references look like hf:<org>/<repo>[:<file.gguf>]", param)
    if filename and not filename.endswith(".gguf"):
        raise _invalid("the file in an hf: reference must end in .gguf", param)
    if filename and not all(_HF_PART.fullmatch(p) for p in filename.split("/")):
        raise _invalid("the file name in an hf: reference is not valid", param)
    return ModelRef(raw=ref, kind="hf", repo=repo, filename=filename or None)


def _parse_url(ref: str, param: str) -> ModelRef:
    url, _, fragment = ref.partition("#")
    sha = None
    if fragment:
        if not fragment.startswith("sha256=") or not _SHA256.fullmatch(fragment[7:]):
            raise _invalid("the fragment must be #sha256=<64 lowercase hex digits>", param)
        sha = fragment[7:]
    parts = urlsplit(url)
    if not parts.hostname:
        raise _invalid("the URL has no host", param)
    name = parts.path.rsplit("/", 1)[-1]
    if not name.endswith(".gguf"):
        raise _invalid("the URL must name a .gguf file", param)
    return ModelRef(raw=ref, kind="url", url=url, filename=name, sha256=sha)


def _parse_file(ref: str, param: str) -> ModelRef:
    path = ref[5:]
    if path.startswith("//"):
        path = path[2:]
    if not path.startswith("/"):
        raise _invalid("file: references need an absolute path (file:/path/model.gguf)", param)
    if not path.endswith(".gguf"):
        raise _invalid("the file must end in .gguf", param)
    return ModelRef(raw=ref, kind="file", path=path, filename=path.rsplit("/", 1)[-1])
