"""How one operation of the OpenAPI document is described: its errors in the route's protocol,
JSON bodies, query and path parameters, and the scoring operation several paths share."""

from __future__ import annotations

from typing import Any

from gateway.api.openapi_schemas import Schema, ref

_ERROR_SCHEMA = {"mlflow": "MlflowError", "openai": "OpenAIError", "anthropic": "AnthropicError"}
_STATUS_TEXT = {
    400: "Invalid request",
    401: "Missing or invalid API key or token",
    403: "The caller may not use this endpoint or route",
    404: "Unknown endpoint or model",
    413: "Request body over `server.max_body_bytes`",
    415: "Unsupported Content-Type",
    429: "A rate limit, token limit, budget or provisioned capacity is used up (see Retry-After)",
    500: "The model failed while predicting (MLflow's INTERNAL_ERROR)",
    502: "The upstream failed or could not be reached",
    503: "The gateway is starting (models still loading) or a store is unavailable",
    504: "The upstream did not answer in time",
    "4XX": "Another client error, passed on from the upstream with its status and message",
}
_RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds until a retry may succeed, when that is known.",
        "schema": {"type": "integer", "minimum": 1},
    }
}
OPEN_SECURITY: list[dict[str, list[str]]] = []  # `security: []` overrides the global default


def json(schema: Schema, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def errors(protocol: str, *statuses: int | str) -> dict[str, Any]:
    schema = ref(_ERROR_SCHEMA[protocol])
    responses: dict[str, Any] = {}
    for status in statuses:
        responses[str(status)] = json(schema, _STATUS_TEXT[status])
        if status == 429:
            responses[str(status)]["headers"] = _RETRY_AFTER
    return responses


def operation(
    operation_id: str,
    summary: str,
    tag: str,
    responses: dict[str, Any],
    *,
    secured: bool = True,
    body: dict[str, Any] | None = None,
    parameters: list[dict[str, Any]] | None = None,
    description: str | None = None,
) -> dict[str, Any]:
    operation: dict[str, Any] = {"operationId": operation_id, "summary": summary, "tags": [tag]}
    if description:
        operation["description"] = description
    if parameters:
        operation["parameters"] = parameters
    if body is not None:
        operation["requestBody"] = body
    operation["responses"] = responses
    if not secured:
        operation["security"] = OPEN_SECURITY
    return operation


def query(name: str, schema: Schema, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


_SCORING_BODY = {
    "required": True,
    "content": {
        "application/json": {"schema": ref("ScoringRequest")},
        "text/csv": {"schema": {"type": "string"}},
        "application/vnd.apache.parquet": {
            "schema": {"type": "string", "contentMediaType": "application/vnd.apache.parquet"}
        },
    },
}
_SCORED = {
    "description": '`{"predictions": ...}`; an LLM endpoint answers the OpenAI body of its task,'
    " and an MLflow model with an LLM signature its unwrapped answer.",
    "content": {
        "application/json": {
            "schema": {
                "anyOf": [
                    ref("Predictions"),
                    ref("ChatCompletion"),
                    ref("Completion"),
                    ref("EmbeddingList"),
                    {"type": "object", "description": "An LLM model's unwrapped answer"},
                ]
            }
        },
        "text/event-stream": {"schema": ref("EventStream")},
    },
}
NAME = {
    "name": "name",
    "in": "path",
    "required": True,
    "description": "The endpoint's name, as in the config's `endpoints`.",
    "schema": {"type": "string", "minLength": 1, "pattern": "^[^/]+$"},
}
_SCORING_ERRORS = (400, 401, 403, 404, 413, 415, 429, 500, 502, 503, 504, "4XX")


def scoring(name: str | None, operation_id: str | None = None) -> dict[str, Any]:
    parameters = None
    if name is not None:
        parameters = [NAME]
    return operation(
        operation_id or ("invokeEndpoint" if name else "invokeDefault"),
        "Score an endpoint" if name else "Score the default endpoint",
        "scoring",
        {"200": _SCORED, **errors("mlflow", *_SCORING_ERRORS)},
        body=_SCORING_BODY,
        parameters=parameters,
        description="MLflow's scoring protocol (`mlflow models serve`); on an LLM endpoint the"
        " OpenAI body of its task, as Databricks serving endpoints take.",
    )
