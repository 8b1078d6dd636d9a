"""`POST /v1/messages`: Anthropic's Messages API in and out, served by any chat endpoint."""

from __future__ import annotations

import orjson

from gateway.http import Request, Response, StreamingResponse
from gateway.llm import anthropic
from gateway.llm.pipeline import call_llm_endpoint, model_call
from gateway.state import Caller, GatewayState


async def messages(
    request: Request, state: GatewayState, caller: Caller
) -> Response | StreamingResponse:
    endpoint, body = await model_call(request, caller)
    openai_body = anthropic.to_openai_request(body)
    if openai_body.get("stream"):
        openai_body["stream_options"] = {"include_usage": True}  # Anthropic streams carry usage
    answer = await call_llm_endpoint(request, state, caller, endpoint, "chat", openai_body)
    if isinstance(answer, StreamingResponse):
        answer.chunks = anthropic.to_anthropic_events(answer.chunks, endpoint.name)
        return answer
    translated = anthropic.to_anthropic_response(orjson.loads(answer.body), endpoint.name)
    return Response(answer.status, orjson.dumps(translated), headers=answer.headers)
