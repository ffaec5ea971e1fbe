"""`rbee token create`: mint a JWT from the cluster secret."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from shared.auth import Audience, CredentialError, Credentials, Role, mint_token

_TTL = re.compile(r"^(\d+)([smhd]?)$")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


class TokenError(ValueError):
    pass


def parse_ttl(text: str) -> int:
    match = _TTL.match(text.strip())
    if not match or int(match.group(1)) == 0:
        raise TokenError(f"--ttl must look like 3600, 90m, 12h or 30d, not {text!r}")
    return int(match.group(1)) * _UNIT_S[match.group(2)]


def create(args: Any) -> str:
    secret_file = args.jwt_secret_file or os.environ.get("RBEE_JWT_SECRET_FILE")
    if not secret_file:
        raise TokenError("no cluster secret: pass --jwt-secret-file or set RBEE_JWT_SECRET_FILE")
    try:
        secret = Credentials.load(jwt_secret_file=Path(secret_file)).jwt_secret
    except CredentialError as exc:
        raise TokenError(str(exc)) from None
    assert secret is not None
    return mint_token(
        secret,
        role=Role(args.role),
        audience=Audience(args.audience),
        ttl_s=parse_ttl(args.ttl),
        subject=args.subject,
    )
