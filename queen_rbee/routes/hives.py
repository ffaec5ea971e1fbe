"""Hive registry endpoints: operators add, remove, start and stop hives; hives register
and beat."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request
from starlette.responses import JSONResponse, Response

from queen_rbee.deps import Queen, QueenDep
from queen_rbee.validation import body_of, hive_id_of, parse_body
from shared.errors import RbeeError, ValidationError
from shared.hives import (
    HIVE_ID_MAX_LENGTH,
    HIVE_ID_PATTERN,
    Heartbeat,
    HiveCreate,
    HiveInfo,
    HiveRegistration,
)
from shared.service.plain_route import PlainRoute

router = APIRouter()

CreateBody = Annotated[HiveCreate, Depends(body_of(HiveCreate))]
RegistrationBody = Annotated[HiveRegistration, Depends(body_of(HiveRegistration))]
HiveId = Annotated[str, Path(pattern=HIVE_ID_PATTERN, max_length=HIVE_ID_MAX_LENGTH)]


@router.get("/v2/hives")
async def list_hives(queen: QueenDep) -> dict[str, Any]:
    reg = queen.registry
    return {"data": [reg.info(h).model_dump(mode="json") for h in reg.hives()]}


@router.get("/v2/hives/{hive_id}")
async def get_hive(hive_id: HiveId, queen: QueenDep) -> HiveInfo:
    return queen.registry.info(queen.registry.get(hive_id))


@router.post("/v2/hives", status_code=201)
async def add_hive(body: CreateBody, queen: QueenDep) -> HiveInfo:
    if (body.url is None) == (body.ssh is None):
        raise ValidationError("Give exactly one of 'url' or 'ssh'.", param="url")
    if body.url is not None and not body.url.startswith(("http://", "https://")):
        raise ValidationError("The hive URL must start with http:// or https://.", param="url")
    if body.ssh is not None:
        queen.registry.ensure_absent(body.id)  # 409 before any SSH work
        await queen.hosts.preflight(body.ssh)
    hive = await queen.registry.add(body.id, body.url, body.ssh)
    if body.ssh is not None:
        try:
            await queen.hosts.start(hive)
        except RbeeError:
            await queen.registry.remove(hive.id)
            raise
    return queen.registry.info(hive)


@router.put("/v2/hives/{hive_id}")
async def register_hive(hive_id: HiveId, body: RegistrationBody, queen: QueenDep) -> HiveInfo:
    return queen.registry.info(await queen.registry.register(hive_id, body))


@router.delete("/v2/hives/{hive_id}", status_code=204)
async def remove_hive(hive_id: HiveId, queen: QueenDep) -> Response:
    hive = queen.registry.get(hive_id)
    await queen.hosts.stop(hive)
    await queen.registry.remove(hive_id)
    return Response(status_code=204)


@router.post("/v2/hives/{hive_id}/start")
async def start_hive(hive_id: HiveId, queen: QueenDep) -> dict[str, str | None]:
    hive = queen.registry.get(hive_id)
    status = await queen.hosts.start_hive(hive)
    return {"id": hive.id, "url": hive.url, "status": status}


@router.post("/v2/hives/{hive_id}/stop")
async def stop_hive(hive_id: HiveId, queen: QueenDep) -> dict[str, str | None]:
    hive = queen.registry.get(hive_id)
    status = await queen.hosts.stop_hive(hive)
    return {"id": hive.id, "url": hive.url, "status": status}


async def heartbeat(request: Request) -> JSONResponse:
    """`POST /v2/hives/{hive_id}/heartbeat`: the route every hive calls every few seconds.

    A plain Starlette route: FastAPI's dependency solving was a third of the queen's own
    work per heartbeat (profiled with 1,000 simulated hives, `benchmarks/control_plane.py`)."""
    hive_id = hive_id_of(request)
    body = parse_body(await request.body(), Heartbeat)
    queen: Queen = request.app.state.queen
    seen = {w.id: w.restarts for w in queen.registry.workers_of(hive_id)}
    hive = await queen.registry.heartbeat(hive_id, body)
    restarts = sum(max(0, w.restarts - seen.get(w.id, w.restarts)) for w in body.workers)
    if restarts:
        queen.metrics.restarts.labels(hive_id).inc(restarts)
    return JSONResponse({"status": queen.registry.state_of(hive)})


# first of the hive routes: the request the queen gets most often after inference
router.routes.insert(0, PlainRoute("/v2/hives/{hive_id}/heartbeat", heartbeat, methods=["POST"]))
