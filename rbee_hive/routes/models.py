"""The model catalog and downloads (native SSE progress)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Response

from rbee_hive.deps import HiveDep
from rbee_hive.provisioner import Download
from shared import correlation
from shared.catalog import DownloadRequest
from shared.modelref import parse_model_ref
from shared.service.streaming import SSEResponse
from shared.sse import DONE, encode_comment, encode_data

router = APIRouter()


@router.get("/v1/models")
async def list_models(hive: HiveDep) -> dict[str, Any]:
    entries = await hive.provisioner.catalog()
    return {"data": [e.model_dump(mode="json") for e in entries]}


async def _progress_stream(download: Download, correlation_id: str | None) -> AsyncIterator[bytes]:
    async for event in download.events():
        if event is None:
            yield encode_comment("downloading")
            continue
        if event["type"] == "error":
            event = {**event, "correlation_id": correlation_id}
        yield encode_data(event)
    yield DONE


@router.post("/v1/models/download")
async def download(body: DownloadRequest, hive: HiveDep) -> SSEResponse:
    ref = parse_model_ref(body.model_ref, param="model_ref")
    await hive.provisioner.precheck(ref)
    watched = hive.provisioner.watch(ref)
    return SSEResponse(_progress_stream(watched, correlation.current()))


@router.delete("/v1/models/{model_id}", status_code=204)
async def delete_model(model_id: str, hive: HiveDep) -> Response:
    await hive.provisioner.delete(model_id, hive.pool.models_in_use())
    return Response(status_code=204)
