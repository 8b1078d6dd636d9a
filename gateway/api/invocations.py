"""`POST /invocations`, `POST /serving-endpoints/{name}/invocations` and its alias
`POST /endpoints/{name}/invocations` (MLflow's deployments client): MLflow scoring.

On an LLM endpoint the same route takes the OpenAI body of the endpoint's task, as Databricks
serving endpoints do, with Databricks' query fields: `client_request_id` (the usage row's
client request id, unless `x-request-id` gave one), `usage_context` (its entries become
`usage_context.<key>` request tags) and `extra_params` (merged into the body sent upstream). A
custom model never sees the first two.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.errors import BadRequest, GatewayError
from gateway.http import Request, Response, StreamingResponse, client_request_id, json_object
from gateway.llm.pipeline import call_llm_endpoint, failure_status
from gateway.metering.meter import Meter
from gateway.metering.tags import with_usage_context
from gateway.models import scoring
from gateway.models.served import CustomEndpoint
from gateway.runtime import Endpoint
from gateway.state import Caller, GatewayState

SERVED_MODEL = b"x-served-model"
_DATABRICKS_FIELDS = (b'"client_request_id"', b'"usage_context"')


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
        _take_databricks_fields(request, body)
        extra = body.pop("extra_params", None)
        if extra is not None:
            if not isinstance(extra, dict):
                raise BadRequest("`extra_params` must be a JSON object.")
            body.update(extra)
        body["model"] = endpoint.name
        return await call_llm_endpoint(request, state, caller, endpoint, endpoint.task, body)
    return await _score(request, state, caller, endpoint)


async def _score(
    request: Request, state: GatewayState, caller: Caller, endpoint: CustomEndpoint
) -> Response:
    runtime = caller.runtime
    mime = scoring.check_content_type(request.header(b"content-type"))
    body = await request.body(runtime.loaded.config.server.max_body_bytes)
    if mime == scoring.CONTENT_TYPE_JSON and any(field in body for field in _DATABRICKS_FIELDS):
        document = json_object(body)  # only then: most bodies pass through unparsed
        _take_databricks_fields(request, document)
        body = orjson.dumps(document)
    served = endpoint.pick()
    scoring_request = scoring.ScoringRequest.from_body(mime, body)
    meter = Meter(
        request,
        state.usage,
        runtime.governor,
        caller.principal,
        endpoint.name,
        capture=runtime.capture.get(endpoint.name),
        trace=runtime.tracing.get(endpoint.name),
    )
    meter.served(served.label, run_id=served.run_id, model_uuid=served.model_uuid)
    try:
        await meter.admit()
        meter.call_started()
        result = await served.score(scoring_request)
        meter.call_ended()
    except BaseException as exc:  # every exit after admission settles and records the call
        if isinstance(exc, GatewayError):
            exc.served_model = served.label
        await meter.shielded(meter.finish(failure_status(exc)))
        raise
    await meter.finish(200, rows=scoring_request.row_count())
    return Response(
        200, result, headers=[(SERVED_MODEL, served.label.encode()), *meter.reservation.headers()]
    )


def _take_databricks_fields(request: Request, body: dict[str, Any]) -> None:
    context = body.pop("usage_context", None)
    if context is not None:
        request.tags = with_usage_context(request.tags, context)
    given = body.pop("client_request_id", None)
    if given is None:
        return
    if not isinstance(given, str):
        raise BadRequest("`client_request_id` must be a string.")
    checked = client_request_id(given.encode(), "client_request_id")
    if not request.client_request_id:  # an x-request-id header wins
        request.client_request_id = checked
