"""Spawning, listing and stopping workers; the workers' ready callback."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from rbee_hive.deps import HiveDep
from shared.workers import ReadyCallback, SpawnRequest, WorkerInfo

router = APIRouter()


@router.post("/v1/workers/spawn", status_code=202)
async def spawn(body: SpawnRequest, hive: HiveDep) -> WorkerInfo:
    return await hive.pool.spawn(body)


@router.get("/v1/workers")
async def list_workers(hive: HiveDep) -> dict[str, Any]:
    return {"data": [w.model_dump(mode="json") for w in hive.pool.infos()]}


@router.post("/v1/workers/ready")
async def ready(body: ReadyCallback, hive: HiveDep) -> WorkerInfo:
    return hive.pool.on_ready(body)


@router.get("/v1/workers/{worker_id}")
async def get_worker(worker_id: str, hive: HiveDep) -> WorkerInfo:
    return hive.pool.get(worker_id).info()


@router.delete("/v1/workers/{worker_id}", status_code=204)
async def stop_worker(worker_id: str, hive: HiveDep) -> Response:
    await hive.pool.stop(worker_id)
    return Response(status_code=204)
