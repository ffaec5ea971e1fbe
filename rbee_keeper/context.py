"""What every command knows: where the queen is, which token to send, where state lives."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from shared.auth import is_loopback
from shared.queen_client import QueenClient

DEFAULT_QUEEN_URL = "http://127.0.0.1:8080"
DEFAULT_HIVE_PORT = 9200


def rbee_home() -> Path:
    return Path(os.environ.get("RBEE_HOME") or Path.home() / ".rbee")


@dataclass(frozen=True)
class Context:
    queen_url: str
    token: str | None
    json: bool = False

    @property
    def home(self) -> Path:
        return rbee_home()

    @property
    def queen_host(self) -> str:
        return urlsplit(self.queen_url).hostname or "127.0.0.1"

    @property
    def queen_port(self) -> int:
        return urlsplit(self.queen_url).port or 8080

    @property
    def queen_is_local(self) -> bool:
        return is_loopback(self.queen_host)

    def client(self, timeout: float = 30.0) -> QueenClient:
        token = self.token
        return QueenClient(self.queen_url, token=lambda: token, timeout=timeout)
