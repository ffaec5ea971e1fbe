"""Health, capabilities and shutdown."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from rbee_hive.deps import HiveDep
from shared import __version__
from shared.hives import Capabilities

router = APIRouter()


@router.get("/health")
async def health(hive: HiveDep) -> dict[str, Any]:
    return {"status": "ok", "version": __version__, "id": hive.settings.hive_id}


@router.get("/v1/capabilities")
async def capabilities(hive: HiveDep) -> Capabilities:
    return await hive.resources.capabilities()


@router.post("/v1/shutdown", status_code=202)
async def shutdown(request: Request, hive: HiveDep) -> JSONResponse:
    """Stop every worker, then exit 0 (through the runner's graceful stop)."""
    hive.begin_shutdown()
    request_exit = getattr(request.app.state, "request_exit", None)
    if request_exit is not None:
        request_exit()
    return JSONResponse({"status": "shutting_down"}, status_code=202)
