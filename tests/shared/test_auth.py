import os
import time
from datetime import datetime, tzinfo
from pathlib import Path

import jwt
import pytest

from shared.auth import (
    AccessPolicy,
    Audience,
    Authenticator,
    CredentialError,
    Credentials,
    Role,
    mint_token,
    rule,
)
from shared.errors import InvalidApiKey, MissingApiKey

SECRET = "s3cret-cluster-key-that-is-long-enough"
API_KEY = "rbee-test-api-key-0123456789"


def secret_file(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "secret"
    path.write_text(text + "\n")
    os.chmod(path, mode)
    return path


def authenticator(tmp_path: Path) -> Authenticator:
    creds = Credentials.load(api_key=API_KEY, jwt_secret_file=secret_file(tmp_path, SECRET))
    return Authenticator(lambda: creds, Audience.WORKER)


def test_api_key_is_operator_and_jwt_carries_its_role(tmp_path: Path) -> None:
    auth = authenticator(tmp_path)
    assert auth.authenticate(f"Bearer {API_KEY}").role is Role.OPERATOR
    token = mint_token(SECRET, role=Role.HIVE, audience=Audience.WORKER, ttl_s=60)
    principal = auth.authenticate(f"Bearer {token}")
    assert principal.role is Role.HIVE
    assert principal.fingerprint.startswith("token:") and token not in principal.fingerprint


@pytest.mark.parametrize("header", [None, "", "Bearer ", "Basic abc", "Bearer"])
def test_missing_token(tmp_path: Path, header: str | None) -> None:
    with pytest.raises(MissingApiKey):
        authenticator(tmp_path).authenticate(header)


def test_rejections_say_why_without_the_token(tmp_path: Path) -> None:
    auth = authenticator(tmp_path)
    now = int(time.time())
    cases = {
        "expired": jwt.encode(
            {"sub": "a", "role": "client", "aud": "rbee-worker", "exp": now - 120},
            SECRET,
            algorithm="HS256",
        ),
        "audience": mint_token(SECRET, role=Role.CLIENT, audience=Audience.QUEEN, ttl_s=60),
        "signature": mint_token(
            "another-secret-that-is-long-enough-too",
            role=Role.CLIENT,
            audience=Audience.WORKER,
            ttl_s=60,
        ),
        "'none'": jwt.encode(
            {"sub": "a", "role": "operator", "aud": "rbee-worker", "exp": now + 60},
            None,
            algorithm="none",
        ),
        "'role'": jwt.encode(
            {"sub": "a", "aud": "rbee-worker", "exp": now + 60}, SECRET, algorithm="HS256"
        ),
    }
    for word, token in cases.items():
        with pytest.raises(InvalidApiKey) as info:
            auth.authenticate(f"Bearer {token}")
        assert word in info.value.message, (word, info.value.message)
        assert token not in info.value.message


def test_secret_files_must_be_private_and_non_empty(tmp_path: Path) -> None:
    with pytest.raises(CredentialError, match="mode 0644"):
        Credentials.load(jwt_secret_file=secret_file(tmp_path, SECRET, 0o644))
    with pytest.raises(CredentialError, match="empty"):
        Credentials.load(jwt_secret_file=secret_file(tmp_path, "  "))
    with pytest.raises(CredentialError, match="shorter than 32 bytes"):
        Credentials.load(jwt_secret_file=secret_file(tmp_path, "too-short-secret"))
    with pytest.raises(CredentialError, match="shorter than 16"):
        Credentials.load(api_key="short")


def test_reload_swaps_keys_and_keeps_old_ones_on_error(tmp_path: Path) -> None:
    path = secret_file(tmp_path, API_KEY)
    auth = Authenticator(lambda: Credentials.load(api_key_file=path), Audience.HIVE)
    new_key = "rbee-rotated-key-abcdefghijkl"
    path.write_text(new_key + "\n")
    auth.reload()
    assert auth.authenticate(f"Bearer {new_key}").role is Role.OPERATOR
    with pytest.raises(InvalidApiKey):
        auth.authenticate(f"Bearer {API_KEY}")
    path.write_text("")
    auth.reload()  # refused: the rotated key stays valid
    assert auth.authenticate(f"Bearer {new_key}").role is Role.OPERATOR


def test_policy_roles() -> None:
    policy = AccessPolicy(
        [rule("GET", "/v1/ready", Role.HIVE), rule("POST", r"/v2/hives/[^/]+/heartbeat", Role.HIVE)]
    )
    assert policy.is_public("GET", "/health") and policy.is_public("GET", "/metrics")
    assert policy.allows(Role.HIVE, "POST", "/v2/hives/h1/heartbeat")
    assert not policy.allows(Role.HIVE, "POST", "/v2/hives/h1/heartbeat/x")
    assert not policy.allows(Role.CLIENT, "GET", "/v1/ready")
    assert policy.allows(Role.OPERATOR, "DELETE", "/anything")
    assert not AccessPolicy([], metrics_public=False).is_public("GET", "/metrics")


def test_a_checked_token_is_remembered_until_it_expires(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    auth = authenticator(tmp_path)
    token = mint_token(SECRET, role=Role.HIVE, audience=Audience.WORKER, ttl_s=60)
    assert auth.authenticate(f"Bearer {token}").role is Role.HIVE
    assert auth.authenticate(f"Bearer {token}").role is Role.HIVE  # from the cache
    later = time.time() + 60 + 31  # past its expiry and the 30 s leeway, for both clocks
    monkeypatch.setattr(time, "time", lambda: later)
    monkeypatch.setattr(jwt.api_jwt, "datetime", _clock_at(later))
    with pytest.raises(InvalidApiKey, match="expired"):
        auth.authenticate(f"Bearer {token}")


def test_a_rotated_secret_invalidates_remembered_tokens(tmp_path: Path) -> None:
    path = secret_file(tmp_path, SECRET)
    auth = Authenticator(lambda: Credentials.load(jwt_secret_file=path), Audience.WORKER)
    token = mint_token(SECRET, role=Role.HIVE, audience=Audience.WORKER, ttl_s=60)
    assert auth.authenticate(f"Bearer {token}").role is Role.HIVE
    path.write_text("a-new-cluster-secret-0123456789abcdef\n")
    auth.reload()
    with pytest.raises(InvalidApiKey, match="signature"):
        auth.authenticate(f"Bearer {token}")


def test_internal_tokens_are_reused_for_half_their_life(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    creds = Credentials.load(jwt_secret_file=secret_file(tmp_path, SECRET))
    first = creds.bearer_for(Audience.QUEEN, Role.HIVE, ttl_s=60)
    assert first is not None and creds.bearer_for(Audience.QUEEN, Role.HIVE, ttl_s=60) == first
    assert creds.bearer_for(Audience.WORKER, Role.HIVE, ttl_s=60) != first  # another audience
    now = time.time()
    monkeypatch.setattr(time, "time", lambda: now + 31)
    fresh = creds.bearer_for(Audience.QUEEN, Role.HIVE, ttl_s=60)
    assert fresh is not None and fresh != first
    claims = jwt.decode(fresh, SECRET, algorithms=["HS256"], audience="rbee-queen", leeway=60)
    assert claims["exp"] >= now + 31 + 59  # a full lifetime from when it was minted


def _clock_at(timestamp: float) -> type[datetime]:
    """A `datetime` whose now() is `timestamp`: pyjwt's own clock."""

    class Clock(datetime):
        @classmethod
        def now(cls, tz: tzinfo | None = None) -> datetime:
            return cls.fromtimestamp(timestamp, tz)

    return Clock
