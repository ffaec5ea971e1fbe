"""An in-process hive app (ASGITransport + lifespan) for status codes and bodies."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from asgi_lifespan import LifespanManager

from rbee_hive.app import create_app
from rbee_hive.settings import HiveSettings


@pytest.fixture
async def hive_client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    settings = HiveSettings.load(data_dir=tmp_path / "data", hive_id="test-hive")
    app = create_app(settings)
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://hive") as client:
            yield client
