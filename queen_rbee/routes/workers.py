"""Workers across all hives: list, spawn through a hive, stop."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import JSONResponse, Response

from queen_rbee import scheduler
from queen_rbee.deps import OperatorDep, QueenDep
from queen_rbee.validation import body_of, check_model_name
from shared.errors import NoCapacity, WorkerNotFound
from shared.hives import HIVE_ID_MAX_LENGTH
from shared.workers import SpawnRequest

router = APIRouter()


class WorkerSpawn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(min_length=1, max_length=512)
    hive_id: str | None = Field(None, max_length=HIVE_ID_MAX_LENGTH)
    backend: str | None = Field(None, max_length=16)
    device: int | None = Field(None, ge=0)


@router.get("/v2/workers")
async def list_workers(queen: QueenDep) -> dict[str, Any]:
    data = []
    for hive in queen.registry.hives():
        for w in hive.workers:
            data.append(
                {
                    "id": w.id,
                    "hive_id": hive.id,
                    "model": w.model,
                    "state": w.state,
                    "url": w.url,
                    "slots": w.slots.model_dump(),
                    "pid": w.pid,
                }
            )
    return {"data": data}


@router.post("/v2/workers", status_code=202)
async def spawn_worker(
    body: Annotated[WorkerSpawn, Depends(body_of(WorkerSpawn))],
    queen: QueenDep,
    operator: OperatorDep,
) -> JSONResponse:
    check_model_name(body.model, operator=operator)
    if body.hive_id is not None:
        queen.registry.get(body.hive_id)
    options = queen.dispatcher.hive_options(body.model, body.hive_id)
    choice = scheduler.pick_hive(options, None)
    if choice is None:
        raise NoCapacity("No online hive can host this worker.", retry_after=5)
    hive = queen.registry.get(choice.id)
    request = SpawnRequest.model_validate(
        {"model_ref": body.model, "backend": body.backend, "device": body.device}
    )
    info = await queen.control.spawn(hive.url or "", request)
    return JSONResponse({**info.model_dump(mode="json"), "hive_id": hive.id}, status_code=202)


@router.delete("/v2/workers/{worker_id}", status_code=204)
async def stop_worker(worker_id: str, queen: QueenDep) -> Response:
    for hive in queen.registry.hives():
        if hive.url and any(w.id == worker_id for w in hive.workers):
            await queen.control.call(hive.url, "DELETE", f"/v1/workers/{worker_id}")
            queen.registry.forget_worker(worker_id)
            queen.dispatcher.forget(worker_id)
            return Response(status_code=204)
    raise WorkerNotFound(f"No hive reports a worker '{worker_id[:64]}'.")
