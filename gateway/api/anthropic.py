"""`POST /v1/messages`: Anthropic's Messages API in and out, served by any chat endpoint."""

from __future__ import annotations

import orjson

from gateway import anthropic_format
from gateway.api.llm_calls import call_llm_endpoint, model_call
from gateway.http import Request, Response, StreamingResponse
from gateway.state import GatewayState


async def messages(request: Request, state: GatewayState) -> Response | StreamingResponse:
    runtime, principal, endpoint, body = await model_call(request, state)
    openai_body = anthropic_format.to_openai_request(body)
    if openai_body.get("stream"):
        openai_body["stream_options"] = {"include_usage": True}  # Anthropic streams carry usage
    answer = await call_llm_endpoint(
        request, state, runtime, principal, endpoint, "chat", openai_body
    )
    if isinstance(answer, StreamingResponse):
        answer.chunks = anthropic_format.to_anthropic_events(answer.chunks, endpoint.name)
        return answer
    translated = anthropic_format.to_anthropic_response(orjson.loads(answer.body), endpoint.name)
    return Response(answer.status, orjson.dumps(translated), headers=answer.headers)
