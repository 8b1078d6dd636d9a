"""`POST /v1/messages`: Anthropic's Messages API in and out, served by any chat endpoint."""

from __future__ import annotations

import orjson

from gateway import anthropic_format
from gateway.api.llm_calls import call_llm_endpoint, parse_json_object
from gateway.errors import BadRequest
from gateway.http import Request, Response, StreamingResponse
from gateway.state import GatewayState


async def messages(request: Request, state: GatewayState) -> Response | StreamingResponse:
    runtime = state.runtime_for(request)
    principal = await runtime.keyring.authenticate(
        request.header(b"authorization"), request.header(b"x-api-key")
    )
    body = parse_json_object(await request.body(runtime.loaded.config.server.max_body_bytes))
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("'model' is required: the name of the endpoint to call.")
    endpoint = runtime.llm_endpoint(model)
    runtime.keyring.authorize(principal, endpoint.name)
    openai_body = anthropic_format.to_openai_request(body)
    if openai_body.get("stream"):
        openai_body["stream_options"] = {"include_usage": True}  # Anthropic streams carry usage
    answer = await call_llm_endpoint(
        request, state, runtime, principal, endpoint, "chat", openai_body
    )
    if isinstance(answer, StreamingResponse):
        answer.chunks = anthropic_format.to_anthropic_events(answer.chunks, model)
        return answer
    translated = anthropic_format.to_anthropic_response(orjson.loads(answer.body), model)
    return Response(answer.status, orjson.dumps(translated), headers=answer.headers)
