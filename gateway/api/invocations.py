"""`POST /invocations` and `POST /serving-endpoints/{name}/invocations` (MLflow scoring)."""

from __future__ import annotations

from gateway.backends import scoring
from gateway.backends.mlflow_model import CustomEndpoint
from gateway.errors import GatewayError
from gateway.http import Request, Response
from gateway.runtime import Runtime, RuntimeHolder

SERVED_MODEL = b"x-served-model"


async def invoke_named(request: Request, holder: RuntimeHolder) -> Response:
    runtime = holder.get()
    principal = runtime.keyring.authenticate(
        request.header(b"authorization"), request.header(b"x-api-key")
    )
    endpoint = runtime.endpoint(request.path_params["name"])
    runtime.keyring.authorize(principal, endpoint.name)
    return await _invoke(request, runtime, endpoint)


async def invoke_default(request: Request, holder: RuntimeHolder) -> Response:
    runtime = holder.get()
    principal = runtime.keyring.authenticate(
        request.header(b"authorization"), request.header(b"x-api-key")
    )
    endpoint = runtime.default()
    runtime.keyring.authorize(principal, endpoint.name)
    return await _invoke(request, runtime, endpoint)


async def _invoke(request: Request, runtime: Runtime, endpoint: CustomEndpoint) -> Response:
    mime = scoring.check_content_type(request.header(b"content-type"))
    body = await request.body(runtime.loaded.config.server.max_body_bytes)
    served = endpoint.pick()
    try:
        result = await served.score(scoring.ScoringRequest.from_body(mime, body))
    except GatewayError as error:
        error.served_model = served.label
        raise
    return Response(200, result, headers=[(SERVED_MODEL, served.label.encode())])
