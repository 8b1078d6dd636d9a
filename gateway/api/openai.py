"""OpenAI-compatible routes: `/v1/chat/completions`, `/v1/completions`, `/v1/embeddings`,
`/v1/models`. The request's `model` names the endpoint."""

from __future__ import annotations

from typing import Any

import orjson

from gateway.api.llm_calls import call_llm_endpoint, model_call
from gateway.config import Task
from gateway.http import Request, Response, StreamingResponse
from gateway.state import GatewayState


async def chat_completions(request: Request, state: GatewayState) -> Response | StreamingResponse:
    return await _by_model(request, state, "chat")


async def completions(request: Request, state: GatewayState) -> Response | StreamingResponse:
    return await _by_model(request, state, "completions")


async def embeddings(request: Request, state: GatewayState) -> Response | StreamingResponse:
    return await _by_model(request, state, "embeddings")


async def _by_model(
    request: Request, state: GatewayState, task: Task
) -> Response | StreamingResponse:
    runtime, principal, endpoint, body = await model_call(request, state)
    return await call_llm_endpoint(request, state, runtime, principal, endpoint, task, body)


async def list_models(request: Request, state: GatewayState) -> Response:
    runtime, principal = await state.caller(request)
    created = int(runtime.loaded_at)
    models: list[dict[str, Any]] = [
        {
            "id": name,
            "object": "model",
            "created": created,
            "owned_by": "gateway",
            "task": endpoint.task,
        }
        for name, endpoint in runtime.llm_endpoints.items()
        if principal.may_call(name)
    ]
    return Response(200, orjson.dumps({"object": "list", "data": models}))
