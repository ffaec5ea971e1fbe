"""Health, readiness and shutdown."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from llm_worker.deps import RuntimeDep
from shared import __version__
from shared.workers import Readiness

router = APIRouter()


@router.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok", "version": __version__}


@router.get("/v1/ready")
async def ready(runtime: RuntimeDep) -> JSONResponse:
    body = Readiness(
        ready=runtime.state == "ready",
        state=runtime.state,
        model_ref=runtime.settings.effective_model_ref,
        slots_total=runtime.slots_total,
        slots_busy=runtime.slots_busy,
        progress=round(runtime.progress, 4),
    )
    return JSONResponse(body.model_dump(), status_code=200 if body.ready else 503)


@router.post("/v1/shutdown", status_code=202)
async def shutdown(request: Request) -> Response:
    # Answer first, then stop: the caller hears back before the listener closes.
    asyncio.get_running_loop().call_soon(request.app.state.request_exit)
    return Response(status_code=202)
