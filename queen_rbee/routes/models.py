"""The catalog over all hives, deletes, and pulls that stream a hive's download events."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from queen_rbee import catalog, scheduler
from queen_rbee.deps import OperatorDep, Queen, QueenDep
from queen_rbee.validation import body_of, check_model_name
from shared.errors import NoCapacity
from shared.hives import HIVE_ID_MAX_LENGTH, HIVE_ID_PATTERN
from shared.service.streaming import SSEResponse
from shared.sse import DONE, SSEEvent, encode_data

router = APIRouter()


class PullRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(min_length=1, max_length=512)
    hive_id: str | None = Field(None, max_length=HIVE_ID_MAX_LENGTH)


# a catalog id: `[a-z0-9._-]` with at least one character that is not a dot
ModelId = Annotated[str, Path(pattern=r"^[a-z0-9._-]*[a-z0-9_-][a-z0-9._-]*$", max_length=200)]
HiveQuery = Annotated[str | None, Query(pattern=HIVE_ID_PATTERN, max_length=HIVE_ID_MAX_LENGTH)]


@router.get("/v2/models")
async def list_catalog(queen: QueenDep) -> dict[str, Any]:
    return {"data": await catalog.listing(queen.registry, queen.control)}


@router.delete("/v2/models/{model_id}", status_code=204)
async def delete_model(model_id: ModelId, queen: QueenDep, hive_id: HiveQuery = None) -> Response:
    await catalog.delete(queen.registry, queen.control, model_id, hive_id)
    return Response(status_code=204)


@router.post("/v2/models/pull")
async def pull(
    body: Annotated[PullRequest, Depends(body_of(PullRequest))],
    queen: QueenDep,
    operator: OperatorDep,
) -> SSEResponse:
    check_model_name(body.model, operator=operator)
    if body.hive_id is not None:
        queen.registry.get(body.hive_id)
    choice = scheduler.pick_hive(queen.dispatcher.hive_options(body.model, body.hive_id), None)
    if choice is None:
        raise NoCapacity("No online hive can take this download.", retry_after=5)
    hive = queen.registry.get(choice.id)
    stack = AsyncExitStack()
    events = await stack.enter_async_context(
        queen.control.stream(hive.url or "", "/v1/models/download", {"model_ref": body.model})
    )
    queen.metrics.downloads.labels(body.model).inc()
    return SSEResponse(_relay(events, stack, hive.id, queen, body.model))


async def _relay(
    events: AsyncIterator[SSEEvent], stack: AsyncExitStack, hive_id: str, queen: Queen, model: str
) -> AsyncIterator[bytes]:
    try:
        async for event in events:
            if event.data is None:
                continue
            if event.is_done:
                break
            payload = event.json()
            if isinstance(payload, dict):
                payload["hive_id"] = hive_id
                if payload.get("type") == "end":
                    size = (payload.get("model") or {}).get("size") or 0
                    queen.metrics.downloaded_bytes.labels(model).inc(int(size))
            yield encode_data(payload)
        yield DONE
    finally:
        await stack.aclose()
