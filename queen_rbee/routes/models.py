"""The catalog over all hives, and pulls that stream a hive's download events."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from queen_rbee import scheduler
from queen_rbee.deps import OperatorDep, Queen, QueenDep
from queen_rbee.validation import body_of, check_model_name
from shared.errors import NoCapacity, RbeeError
from shared.service.streaming import SSEResponse
from shared.sse import DONE, SSEEvent, encode_data

router = APIRouter()


class PullRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(min_length=1, max_length=512)
    hive_id: str | None = Field(None, max_length=63)


@router.get("/v2/models")
async def list_catalog(queen: QueenDep) -> dict[str, Any]:
    hives = [h for h in queen.registry.online() if h.url]

    async def one(url: str) -> list[dict[str, Any]]:
        try:
            return [m.model_dump(mode="json") for m in await queen.control.models(url)]
        except RbeeError:  # an unreachable hive must not break the listing
            return []

    results = await asyncio.gather(*(one(h.url or "") for h in hives))
    data = [
        {**entry, "hive_id": h.id}
        for h, entries in zip(hives, results, strict=True)
        for entry in entries
    ]
    return {"data": data}


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
