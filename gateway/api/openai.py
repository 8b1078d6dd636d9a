"""OpenAI-compatible routes: `/v1/chat/completions`, `/v1/completions`, `/v1/embeddings`,
`/v1/models`. The request's `model` names the endpoint."""

from __future__ import annotations

from typing import Any

import orjson

from gateway.config.schema import Task
from gateway.http import Request, Response, StreamingResponse
from gateway.llm.pipeline import call_llm_endpoint, model_call
from gateway.state import Caller, GatewayState


async def chat_completions(
    request: Request, state: GatewayState, caller: Caller
) -> Response | StreamingResponse:
    return await _by_model(request, state, caller, "chat")


async def completions(
    request: Request, state: GatewayState, caller: Caller
) -> Response | StreamingResponse:
    return await _by_model(request, state, caller, "completions")


async def embeddings(
    request: Request, state: GatewayState, caller: Caller
) -> Response | StreamingResponse:
    return await _by_model(request, state, caller, "embeddings")


async def _by_model(
    request: Request, state: GatewayState, caller: Caller, task: Task
) -> Response | StreamingResponse:
    endpoint, body = await model_call(request, caller)
    return await call_llm_endpoint(request, state, caller, endpoint, task, body)


async def list_models(request: Request, state: GatewayState, caller: Caller) -> Response:
    runtime = caller.runtime
    created = int(runtime.loaded_at)
    models: list[dict[str, Any]] = [
        {
            "id": name,
            "object": "model",
            "created": created,
            "owned_by": "gateway",
            "task": runtime.task(name),
        }
        for name in runtime.endpoints
        if caller.principal.may_call(name)
    ]
    return Response(200, orjson.dumps({"object": "list", "data": models}))
