"""Authentication and authorisation, shared by all three services.

Two kinds of bearer token are accepted:

* API keys: static secrets from a file or `RBEE_API_KEY`, compared in constant time;
  an API key carries the role `operator`.
* JWTs: HS256 with the cluster secret, or RS256/EdDSA with a public key. The accepted
  algorithms are exactly those configured (never `none`); `sub`, `exp`, `aud` and `role`
  are required, with 30 s of leeway.

With no credential configured a service runs in dev mode, which is allowed on loopback
binds only. :class:`AuthMiddleware` is pure ASGI so it never buffers streaming bodies.
Credentials are re-read on SIGHUP through :meth:`Authenticator.reload`.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import os
import re
import stat
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import jwt

from shared import correlation
from shared.errors import Forbidden, InvalidApiKey, MissingApiKey, RbeeError, safe_text

logger = logging.getLogger(__name__)

MIN_API_KEY_LENGTH = 16
MIN_JWT_SECRET_BYTES = 32  # RFC 7518 3.2: an HS256 key as long as the hash
LEEWAY_S = 30


class Role(StrEnum):
    CLIENT = "client"
    OPERATOR = "operator"
    HIVE = "hive"
    WORKER = "worker"


class Audience(StrEnum):
    QUEEN = "rbee-queen"
    HIVE = "rbee-hive"
    WORKER = "rbee-worker"


class CredentialError(ValueError):
    """A credential file or value that stops a service from starting."""


def token_fingerprint(token: str) -> str:
    """How logs name a caller: never the token itself."""
    return "token:" + hashlib.sha256(token.encode()).hexdigest()[:6]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _read_secret_file(path: Path, what: str, *, private: bool) -> str:
    try:
        info = path.stat()
        text = path.read_text()
    except OSError as exc:
        raise CredentialError(f"{what} {path} is unreadable: {exc.strerror}") from None
    mode = stat.S_IMODE(info.st_mode)
    if private and mode not in (0o600, 0o400):
        raise CredentialError(f"{what} {path} has mode {mode:04o}; it must be 0600 or 0400")
    text = text.removesuffix("\n").removesuffix("\r")
    if not text.strip():
        raise CredentialError(f"{what} {path} is empty")
    return text


def _check_api_key(key: str, origin: str) -> str:
    if len(key) < MIN_API_KEY_LENGTH:
        raise CredentialError(
            f"API key from {origin} is shorter than {MIN_API_KEY_LENGTH} characters"
        )
    return key


@dataclass(frozen=True)
class Credentials:
    """What one service accepts; immutable, swapped whole on reload."""

    api_keys: tuple[str, ...] = ()
    jwt_secret: str | None = None
    jwt_public_key: str | None = None

    @property
    def dev_mode(self) -> bool:
        return not (self.api_keys or self.jwt_secret or self.jwt_public_key)

    @classmethod
    def load(
        cls,
        *,
        api_key: str | None = None,
        api_key_file: Path | None = None,
        jwt_secret_file: Path | None = None,
        jwt_public_key_file: Path | None = None,
    ) -> Credentials:
        keys: list[str] = []
        if api_key:
            keys.append(_check_api_key(api_key.strip(), "RBEE_API_KEY"))
        if api_key_file is not None:
            text = _read_secret_file(api_key_file, "API key file", private=True)
            keys += [
                _check_api_key(line.strip(), str(api_key_file))
                for line in text.splitlines()
                if line.strip()
            ]
        secret = (
            _read_secret_file(jwt_secret_file, "JWT secret file", private=True)
            if jwt_secret_file is not None
            else None
        )
        if secret is not None and len(secret.encode()) < MIN_JWT_SECRET_BYTES:
            raise CredentialError(
                f"JWT secret in {jwt_secret_file} is shorter than {MIN_JWT_SECRET_BYTES} bytes"
            )
        public = (
            _read_secret_file(jwt_public_key_file, "JWT public key file", private=False)
            if jwt_public_key_file is not None
            else None
        )
        return cls(tuple(keys), secret, public)

    def bearer_for(self, audience: Audience, role: Role, ttl_s: float = 300) -> str | None:
        """A token for an internal call: a short-lived JWT when we hold the secret.

        A minted token is reused for the first half of its life: internal calls come many
        a second (every relayed request, every heartbeat), and both minting and checking
        a signature cost more than the rest of a small call.
        """
        if self.jwt_secret:
            key = (self.jwt_secret, str(audience), str(role), ttl_s)
            cached = _minted.get(key)
            now = time.time()
            if cached is not None and cached[1] > now:
                return cached[0]
            token = mint_token(self.jwt_secret, role=role, audience=audience, ttl_s=ttl_s)
            if len(_minted) >= MINTED_CACHE_SIZE:
                _minted.clear()
            _minted[key] = (token, now + ttl_s / 2)
            return token
        if self.api_keys:
            return self.api_keys[0]
        return None


MINTED_CACHE_SIZE = 64
# (secret, audience, role, ttl) -> (token, reuse until): tokens this process minted
_minted: dict[tuple[str, str, str, float], tuple[str, float]] = {}


def mint_token(
    secret: str,
    *,
    role: Role | str,
    audience: Audience | str,
    ttl_s: float,
    subject: str = "rbee",
) -> str:
    now = int(time.time())
    claims = {
        "sub": subject,
        "role": str(role),
        "aud": str(audience),
        "iat": now,
        "exp": now + int(ttl_s),
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode(claims, secret, algorithm="HS256")


def _public_key_algorithm(pem: str) -> str:
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        key = load_pem_public_key(pem.encode())
    except ValueError:
        raise CredentialError("JWT public key file is not a PEM public key") from None
    if isinstance(key, rsa.RSAPublicKey):
        return "RS256"
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "EdDSA"
    raise CredentialError("JWT public key must be RSA (RS256) or Ed25519 (EdDSA)")


@dataclass(frozen=True)
class Principal:
    subject: str
    role: Role
    fingerprint: str


VERIFIED_CACHE_SIZE = 4096


class Authenticator:
    """Verifies bearer tokens against the current credentials of one service."""

    def __init__(self, loader: Callable[[], Credentials], audience: Audience) -> None:
        self._loader = loader
        self.audience = audience
        self.credentials = loader()
        self._keys = self._verification_keys(self.credentials)
        # token -> (its principal, its expiry): a token checked once is not checked again
        # until it expires (the same token comes with every call of its holder)
        self._verified: dict[str, tuple[Principal, float]] = {}

    @staticmethod
    def _verification_keys(creds: Credentials) -> dict[str, str]:
        keys: dict[str, str] = {}
        if creds.jwt_secret:
            keys["HS256"] = creds.jwt_secret
        if creds.jwt_public_key:
            keys[_public_key_algorithm(creds.jwt_public_key)] = creds.jwt_public_key
        return keys

    def reload(self) -> None:
        """Re-read credentials (SIGHUP); on error keep the old ones and say why."""
        try:
            creds = self._loader()
            keys = self._verification_keys(creds)
        except CredentialError as exc:
            logger.error("credentials not reloaded: %s", exc, extra={"action": "auth_reload"})
            return
        self.credentials, self._keys = creds, keys
        self._verified = {}  # a rotated secret must not keep old tokens valid
        logger.info("credentials reloaded", extra={"action": "auth_reload"})

    @property
    def dev_mode(self) -> bool:
        return self.credentials.dev_mode

    def authenticate(self, authorization: str | None) -> Principal:
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise MissingApiKey()
        for key in self.credentials.api_keys:
            if hmac.compare_digest(key.encode(), token.encode()):
                return Principal("api-key", Role.OPERATOR, token_fingerprint(token))
        if token.count(".") != 2:
            raise InvalidApiKey("The API key is not valid.")
        cached = self._verified.get(token)
        if cached is not None:
            if time.time() <= cached[1] + LEEWAY_S:
                return cached[0]
            del self._verified[token]
        principal, expires = self._verify_jwt(token, token_fingerprint(token))
        if len(self._verified) >= VERIFIED_CACHE_SIZE:
            self._verified = {}
        self._verified[token] = (principal, expires)
        return principal

    def _verify_jwt(self, token: str, fingerprint: str) -> tuple[Principal, float]:
        try:
            alg = jwt.get_unverified_header(token).get("alg")
        except jwt.InvalidTokenError:
            raise InvalidApiKey("The token is malformed.") from None
        key = self._keys.get(str(alg))
        if key is None:
            raise InvalidApiKey(f"The token's algorithm '{alg}' is not accepted.")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[str(alg)],
                audience=str(self.audience),
                leeway=LEEWAY_S,
                options={"require": ["sub", "exp", "aud", "role"]},
            )
        except jwt.ExpiredSignatureError:
            raise InvalidApiKey("The token has expired.") from None
        except jwt.InvalidAudienceError:
            raise InvalidApiKey(f"The token's audience is not '{self.audience}'.") from None
        except jwt.InvalidSignatureError:
            raise InvalidApiKey("The token's signature is invalid.") from None
        except jwt.MissingRequiredClaimError as exc:
            raise InvalidApiKey(f"The token lacks the required claim '{exc.claim}'.") from None
        except jwt.InvalidTokenError:
            raise InvalidApiKey("The token is invalid.") from None
        try:
            role = Role(claims["role"])
        except ValueError:
            raise InvalidApiKey("The token's role is not one rbee knows.") from None
        return Principal(str(claims["sub"]), role, fingerprint), float(claims["exp"])


@dataclass(frozen=True)
class Rule:
    """Roles allowed for requests whose method and path match."""

    method: str
    path: str  # a regular expression matched against the whole path
    roles: frozenset[Role]
    _regex: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_regex", re.compile(self.path))

    def matches(self, method: str, path: str) -> bool:
        return self.method in (method, "*") and self._regex.fullmatch(path) is not None


def rule(method: str, path: str, *roles: Role) -> Rule:
    return Rule(method, path, frozenset(roles))


class AccessPolicy:
    """Which roles may call what; `operator` may call everything that is not public."""

    def __init__(self, rules: Iterable[Rule], *, metrics_public: bool = True) -> None:
        self.rules = list(rules)
        self.public = {("GET", "/health")}
        if metrics_public:
            self.public.add(("GET", "/metrics"))

    def is_public(self, method: str, path: str) -> bool:
        return (method, path.rstrip("/") or "/") in self.public

    def allows(self, role: Role, method: str, path: str) -> bool:
        if role is Role.OPERATOR:
            return True
        return any(r.matches(method, path) and role in r.roles for r in self.rules)


def error_response_messages(exc: RbeeError) -> tuple[dict[str, Any], dict[str, Any]]:
    """The two ASGI messages of an envelope response, for pure ASGI middleware."""
    body = json.dumps(exc.envelope(correlation.current())).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *[(k.lower().encode(), v.encode()) for k, v in exc.headers().items()],
    ]
    if exc.status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    start = {"type": "http.response.start", "status": exc.status, "headers": headers}
    return start, {"type": "http.response.body", "body": body}


class AuthMiddleware:
    """Pure ASGI: authenticate the bearer token and check the role for the route."""

    def __init__(self, app: Any, authenticator: Authenticator, policy: AccessPolicy) -> None:
        self.app = app
        self.authenticator = authenticator
        self.policy = policy

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or self.authenticator.dev_mode:
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        if self.policy.is_public(method, path):
            await self.app(scope, receive, send)
            return
        try:
            principal = self._principal(scope)
        except RbeeError as exc:
            logger.info(
                "request refused: %s", exc.code, extra={"action": "auth_refused", "path": path}
            )
            for message in error_response_messages(exc):
                await send(message)
            return
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)

    def _principal(self, scope: dict[str, Any]) -> Principal:
        raw = next((v for k, v in scope["headers"] if k == b"authorization"), None)
        principal = self.authenticator.authenticate(raw.decode("latin-1") if raw else None)
        if not self.policy.allows(principal.role, scope["method"], scope["path"]):
            where = f"{scope['method']} {safe_text(scope['path'])}"
            raise Forbidden(f"Role '{principal.role.value}' may not call {where}.")
        return principal


def environment_api_key() -> str | None:
    return os.environ.get("RBEE_API_KEY") or None
