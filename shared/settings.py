"""Settings shared by every service, and how they are read.

Precedence, highest first: command-line flags, the service's environment variables
(`RBEE_QUEEN_PORT`), a few project-wide variables (`RBEE_API_KEY`, `RBEE_JWT_SECRET_FILE`),
the optional TOML file given by `--config`, then defaults. Every field becomes a flag
(`--drain-timeout-s`) automatically, so flags and environment never drift apart.
An invalid value raises :class:`ConfigError` naming the setting; `__main__` turns that
into one line on stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import os
import tomllib
from collections.abc import Sequence
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal, Self, TypeVar

import pydantic
from pydantic import Field, SecretStr
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from shared.auth import CredentialError, Credentials

_config_file: ContextVar[Path | None] = ContextVar("config_file", default=None)

# Project-wide variables that any service honours, below its own prefixed ones.
SHARED_ENV = {
    "RBEE_API_KEY": "api_key",
    "RBEE_JWT_SECRET_FILE": "jwt_secret_file",
    "RBEE_JWT_PUBLIC_KEY_FILE": "jwt_public_key_file",
}


class ConfigError(ValueError):
    """A setting that stops the service at start."""


def default_data_dir() -> Path:
    return Path(os.environ.get("RBEE_HOME") or Path.home() / ".rbee")


class _SharedEnvSource(PydanticBaseSettingsSource):
    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        fields = self.settings_cls.model_fields
        return {
            name: os.environ[var]
            for var, name in SHARED_ENV.items()
            if name in fields and os.environ.get(var)
        }


class _TomlSource(PydanticBaseSettingsSource):
    """Flat keys named like the settings, from the file given by `--config`."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = _config_file.get()
        if path is None:
            return {}
        try:
            data = tomllib.loads(path.read_text())
        except OSError as exc:
            raise ConfigError(
                f"invalid setting config: {path} is unreadable ({exc.strerror})"
            ) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"invalid setting config: {path} is not valid TOML ({exc})") from None
        unknown = sorted(set(data) - set(self.settings_cls.model_fields))
        if unknown:
            raise ConfigError(f"invalid setting config: unknown key {unknown[0]!r} in {path}")
        return data


class ServiceSettings(BaseSettings):
    """Fields every service has. Subclasses set `env_prefix`."""

    model_config = SettingsConfigDict(
        extra="ignore", validate_default=True, protected_namespaces=()
    )

    host: str = Field("127.0.0.1", description="address to bind")
    port: int = Field(8080, ge=1024, le=65535, description="port to bind")
    data_dir: Path = Field(default_factory=default_data_dir, description="state directory")
    config: Path | None = Field(None, description="TOML file with flat keys named like flags")
    api_key: SecretStr | None = Field(None, description="API key (prefer --api-key-file)")
    api_key_file: Path | None = Field(None, description="file of API keys, one per line")
    jwt_secret_file: Path | None = Field(None, description="cluster secret for HS256 JWTs")
    jwt_public_key_file: Path | None = Field(None, description="public key for RS256/EdDSA")
    metrics_auth: bool = Field(False, description="require a token for /metrics")
    log_format: Literal["json", "text"] = Field("json", description="log line format")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info")
    max_body_bytes: int = Field(1024 * 1024, ge=1024, description="largest request body")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (
            init_settings,
            env_settings,
            _SharedEnvSource(settings_cls),
            _TomlSource(settings_cls),
        )

    def credentials(self) -> Credentials:
        return Credentials.load(
            api_key=self.api_key.get_secret_value() if self.api_key else None,
            api_key_file=self.api_key_file,
            jwt_secret_file=self.jwt_secret_file,
            jwt_public_key_file=self.jwt_public_key_file,
        )

    @classmethod
    def load(cls, **overrides: Any) -> Self:
        """Build from overrides (flags), environment and the config file."""
        config = overrides.get("config") or os.environ.get(_env_name(cls, "config"))
        token = _config_file.set(Path(config) if config else None)
        try:
            return cls(**overrides)
        except pydantic.ValidationError as exc:
            raise ConfigError(_describe(exc)) from None
        finally:
            _config_file.reset(token)


S = TypeVar("S", bound=ServiceSettings)


def _env_name(cls: type[BaseSettings], field: str) -> str:
    return f"{cls.model_config.get('env_prefix', '')}{field}".upper()


def _describe(exc: pydantic.ValidationError) -> str:
    first = exc.errors()[0]
    name = ".".join(str(p) for p in first["loc"]) or "settings"
    return f"invalid setting {name}: {first['msg']}"


def _flag_type(info: FieldInfo) -> Any:
    return None if info.annotation is bool else str


def build_parser(
    cls: type[ServiceSettings], prog: str, description: str
) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    for name, info in cls.model_fields.items():
        flag = "--" + name.replace("_", "-")
        env = _env_name(cls, name)
        help_text = f"{info.description or name} (env {env})"
        if info.annotation is bool:
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=None, help=help_text, dest=name
            )
        else:
            parser.add_argument(flag, default=None, help=help_text, dest=name)
    return parser


def settings_from_argv(
    cls: type[S], argv: Sequence[str] | None, prog: str, description: str
) -> tuple[S | None, bool]:
    """Parse flags into settings; returns (settings, version_requested)."""
    args = vars(build_parser(cls, prog, description).parse_args(argv))
    if args.pop("version"):
        return None, True
    overrides = {k: v for k, v in args.items() if v is not None}
    settings = cls.load(**overrides)
    try:
        settings.credentials()
    except CredentialError as exc:
        raise ConfigError(f"invalid credentials: {exc}") from None
    return settings, False
