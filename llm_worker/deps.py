"""Dependency aliases: handlers receive the runtime and settings, never globals."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from llm_worker.runtime import WorkerRuntime
from llm_worker.settings import WorkerSettings


async def _runtime(request: Request) -> WorkerRuntime:
    runtime: WorkerRuntime = request.app.state.runtime
    return runtime


async def _settings(request: Request) -> WorkerSettings:
    settings: WorkerSettings = request.app.state.settings
    return settings


RuntimeDep = Annotated[WorkerRuntime, Depends(_runtime)]
SettingsDep = Annotated[WorkerSettings, Depends(_settings)]
