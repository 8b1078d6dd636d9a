"""`POST /invocations` and `POST /serving-endpoints/{name}/invocations` (MLflow scoring).

On an LLM endpoint the same route takes the OpenAI body of the endpoint's task, as Databricks
serving endpoints do.
"""

from __future__ import annotations

from gateway.errors import GatewayError
from gateway.http import Request, Response, StreamingResponse, json_object
from gateway.llm.pipeline import call_llm_endpoint, failure_status
from gateway.metering.meter import Meter
from gateway.models import scoring
from gateway.models.served import CustomEndpoint
from gateway.runtime import Endpoint
from gateway.state import Caller, GatewayState

SERVED_MODEL = b"x-served-model"


async def invoke_named(
    request: Request, state: GatewayState, caller: Caller
) -> Response | StreamingResponse:
    endpoint = caller.runtime.endpoint(request.path_params["name"])
    return await _invoke(request, state, caller, endpoint)


async def invoke_default(
    request: Request, state: GatewayState, caller: Caller
) -> Response | StreamingResponse:
    return await _invoke(request, state, caller, caller.runtime.default())


async def _invoke(
    request: Request, state: GatewayState, caller: Caller, endpoint: Endpoint
) -> Response | StreamingResponse:
    runtime = caller.runtime
    runtime.keyring.authorize(caller.principal, endpoint.name)
    if not isinstance(endpoint, CustomEndpoint):
        body = json_object(await request.body(runtime.loaded.config.server.max_body_bytes))
        body["model"] = endpoint.name
        return await call_llm_endpoint(request, state, caller, endpoint, endpoint.task, body)
    return await _score(request, state, caller, endpoint)


async def _score(
    request: Request, state: GatewayState, caller: Caller, endpoint: CustomEndpoint
) -> Response:
    runtime = caller.runtime
    mime = scoring.check_content_type(request.header(b"content-type"))
    body = await request.body(runtime.loaded.config.server.max_body_bytes)
    served = endpoint.pick()
    scoring_request = scoring.ScoringRequest.from_body(mime, body)
    meter = Meter(request, state.usage, runtime.governor, caller.principal, endpoint.name)
    meter.served(served.label, run_id=served.run_id, model_uuid=served.model_uuid)
    try:
        await meter.admit()
        result = await served.score(scoring_request)
    except BaseException as exc:  # every exit after admission settles and records the call
        if isinstance(exc, GatewayError):
            exc.served_model = served.label
        await meter.shielded(meter.finish(failure_status(exc)))
        raise
    await meter.finish(200, rows=scoring_request.row_count())
    return Response(
        200, result, headers=[(SERVED_MODEL, served.label.encode()), *meter.reservation.headers()]
    )
