"""The OpenAI-compatible API: model list, chat, completions, embeddings."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from queen_rbee.deps import OperatorDep, Queen, QueenDep
from queen_rbee.inference import Call, parse_deadline
from queen_rbee.validation import check_model_name, parse_body
from shared.errors import ModelNotFound, safe_text
from shared.openai_protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    ModelCard,
    ModelList,
)

router = APIRouter()


@router.get("/v1/models")
async def list_models(queen: QueenDep) -> ModelList:
    return ModelList(data=[ModelCard(id=name) for name in queen.registry.model_names()])


def prepare_call(
    queen: Queen, request: Request, path: str, model: str, body: bytes, *, operator: bool
) -> Call:
    """Checks that need no worker, in the order a client can fix them."""
    ref = check_model_name(model, operator=operator)
    header, deadline = parse_deadline(
        request.headers.get("x-request-deadline"), queen.settings.default_deadline_s
    )
    queen.dispatcher.check_admission(None)
    if ref.kind == "alias" and not queen.registry.has_model(model):
        raise ModelNotFound(f"Model '{safe_text(model)}' is not in any catalog.", param="model")
    return Call(path=path, model=model, body=body, deadline_header=header, deadline=deadline)


@router.post("/v1/chat/completions")
async def chat_completions(request: Request, queen: QueenDep, operator: OperatorDep) -> Response:
    raw = await request.body()
    req = parse_body(raw, ChatCompletionRequest)
    call = prepare_call(queen, request, "/v1/chat/completions", req.model, raw, operator=operator)
    if req.stream:
        return await queen.inference.stream(call)
    return await queen.inference.complete(call, request)


@router.post("/v1/completions")
async def completions(request: Request, queen: QueenDep, operator: OperatorDep) -> Response:
    raw = await request.body()
    req = parse_body(raw, CompletionRequest)
    call = prepare_call(queen, request, "/v1/completions", req.model, raw, operator=operator)
    if req.stream:
        return await queen.inference.stream(call)
    return await queen.inference.complete(call, request)


@router.post("/v1/embeddings")
async def embeddings(request: Request, queen: QueenDep, operator: OperatorDep) -> Response:
    raw = await request.body()
    req = parse_body(raw, EmbeddingRequest)
    call = prepare_call(queen, request, "/v1/embeddings", req.model, raw, operator=operator)
    return await queen.inference.complete(call, request)
