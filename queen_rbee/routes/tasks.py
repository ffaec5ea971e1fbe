"""The native task API: `POST /v2/tasks` (native SSE) and `DELETE /v2/tasks/{id}`."""

from __future__ import annotations

import json

from fastapi import APIRouter, Request
from starlette.responses import Response

from queen_rbee.deps import OperatorDep, QueenDep
from queen_rbee.routes.openai import prepare_call
from queen_rbee.validation import parse_body
from shared.tasks import TaskRequest

router = APIRouter()


@router.post("/v2/tasks")
async def create_task(request: Request, queen: QueenDep, operator: OperatorDep) -> Response:
    req = parse_body(await request.body(), TaskRequest)
    call = prepare_call(queen, request, "/v1/inference", req.model, b"", operator=operator)
    if req.hive_id is not None:
        queen.registry.get(req.hive_id)
        queen.dispatcher.check_admission(req.hive_id)
    call.native, call.hive_id = True, req.hive_id
    native = {
        "job_id": call.job_id,
        "prompt": req.prompt,
        "max_tokens": req.max_tokens,
        "temperature": req.temperature,
        "top_p": req.top_p,
        "seed": req.seed,
        "stop": req.stop_list or None,
    }
    call.body = json.dumps(native, separators=(",", ":")).encode()
    return await queen.inference.stream(call)


@router.delete("/v2/tasks/{job_id}", status_code=204)
async def cancel_task(job_id: str, queen: QueenDep) -> Response:
    await queen.inference.cancel(job_id)
    return Response(status_code=204)
