"""Health and shutdown."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict

from queen_rbee.deps import QueenDep
from queen_rbee.validation import optional_body_of
from shared import __version__
from shared.errors import RbeeError

router = APIRouter()


class ShutdownRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cascade: bool = True


@router.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok", "version": __version__}


@router.post("/v2/shutdown", status_code=202)
async def shutdown(
    request: Request,
    queen: QueenDep,
    body: Annotated[ShutdownRequest, Depends(optional_body_of(ShutdownRequest))],
) -> dict[str, Any]:
    stopped: list[str] = []
    if body.cascade:
        hives = [h for h in queen.registry.hives() if h.url]

        async def stop(url: str, hive_id: str) -> None:
            try:
                await queen.control.call(url, "POST", "/v1/shutdown")
                stopped.append(hive_id)
            except RbeeError:
                pass

        await asyncio.gather(*(stop(h.url or "", h.id) for h in hives))
    exit_now = getattr(request.app.state, "request_exit", None)
    if exit_now is not None:
        asyncio.get_running_loop().call_soon(exit_now)
    return {"status": "shutting_down", "hives_stopped": sorted(stopped)}
