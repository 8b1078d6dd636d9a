"""`POST /invocations` and `POST /serving-endpoints/{name}/invocations` (MLflow scoring).

On an LLM endpoint the same route takes the OpenAI body of the endpoint's task, as Databricks
serving endpoints do.
"""

from __future__ import annotations

import time

from gateway.api.llm_calls import call_llm_endpoint, parse_json_object
from gateway.auth import Principal
from gateway.backends import scoring
from gateway.backends.mlflow_model import CustomEndpoint
from gateway.errors import GatewayError
from gateway.governance import UNLIMITED
from gateway.http import Request, Response, StreamingResponse
from gateway.metering.usage import UsageEvent
from gateway.runtime import Endpoint, Runtime
from gateway.state import GatewayState

SERVED_MODEL = b"x-served-model"


async def invoke_named(request: Request, state: GatewayState) -> Response | StreamingResponse:
    runtime, principal = await state.caller(request)
    return await _invoke(
        request, state, runtime, principal, runtime.endpoint(request.path_params["name"])
    )


async def invoke_default(request: Request, state: GatewayState) -> Response | StreamingResponse:
    runtime, principal = await state.caller(request)
    return await _invoke(request, state, runtime, principal, runtime.default())


async def _invoke(
    request: Request,
    state: GatewayState,
    runtime: Runtime,
    principal: Principal,
    endpoint: Endpoint,
) -> Response | StreamingResponse:
    runtime.keyring.authorize(principal, endpoint.name)
    if not isinstance(endpoint, CustomEndpoint):
        body = parse_json_object(await request.body(runtime.loaded.config.server.max_body_bytes))
        body["model"] = endpoint.name
        return await call_llm_endpoint(
            request, state, runtime, principal, endpoint, endpoint.task, body
        )
    return await _score(request, state, runtime, principal, endpoint)


async def _score(
    request: Request,
    state: GatewayState,
    runtime: Runtime,
    principal: Principal,
    endpoint: CustomEndpoint,
) -> Response:
    mime = scoring.check_content_type(request.header(b"content-type"))
    body = await request.body(runtime.loaded.config.server.max_body_bytes)
    served = endpoint.pick()
    scoring_request = scoring.ScoringRequest.from_body(mime, body)
    governor = runtime.governor
    reservation = UNLIMITED
    status = 200
    try:
        reservation = await governor.admit(principal, endpoint.name)
        result = await served.score(scoring_request)
    except GatewayError as error:
        error.served_model = served.label
        status = error.status
        raise
    finally:
        await governor.settle(reservation)
        await state.usage.record(
            UsageEvent(
                request_id=request.request_id,
                time=time.time() - (time.perf_counter() - request.started),
                principal=principal.id,
                groups=principal.groups,
                endpoint=endpoint.name,
                served=served.label,
                route=request.scope["path"],
                status=status,
                latency_ms=(time.perf_counter() - request.started) * 1000,
                overhead_ms=0.0,
                rows=scoring_request.row_count() if status == 200 else 0,
            ),
            principal,
        )
    return Response(
        200, result, headers=[(SERVED_MODEL, served.label.encode()), *reservation.headers()]
    )
