"""The OpenAPI 3.1 document of every route in `gateway.routes.ROUTES` (`/openapi.json`).

The document is a plain dict, built on its first request and cached: importing this module costs
nothing, and no request but `/openapi.json` and `/docs` pays for building it. The schemas of the
bodies are in `openapi_schemas`; `/docs` and its assets are served by `gateway.api.docs`.
"""

from __future__ import annotations

import functools
from typing import Any

import orjson

from gateway import __version__
from gateway.api.openapi_schemas import SCHEMAS, Schema, ref

HEALTH_LINKS = ("/ping", "/health", "/live", "/ready", "/version")
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
_OPEN_SECURITY: list[dict[str, list[str]]] = []  # `security: []` overrides the global default


def _json(schema: Schema, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(protocol: str, *statuses: int | str) -> dict[str, Any]:
    schema = ref(_ERROR_SCHEMA[protocol])
    responses: dict[str, Any] = {}
    for status in statuses:
        responses[str(status)] = _json(schema, _STATUS_TEXT[status])
        if status == 429:
            responses[str(status)]["headers"] = _RETRY_AFTER
    return responses


def _operation(
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
        operation["security"] = _OPEN_SECURITY
    return operation


def _query(name: str, schema: Schema, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


# --- the operations, by area --------------------------------------------------------------------

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
_NAME = {
    "name": "name",
    "in": "path",
    "required": True,
    "description": "The endpoint's name, as in the config's `endpoints`.",
    "schema": {"type": "string", "minLength": 1, "pattern": "^[^/]+$"},
}
_SCORING_ERRORS = (400, 401, 403, 404, 413, 415, 429, 500, 502, 503, 504, "4XX")


def _scoring(name: str | None, operation_id: str | None = None) -> dict[str, Any]:
    parameters = None
    if name is not None:
        parameters = [_NAME]
    return _operation(
        operation_id or ("invokeEndpoint" if name else "invokeDefault"),
        "Score an endpoint" if name else "Score the default endpoint",
        "scoring",
        {"200": _SCORED, **_errors("mlflow", *_SCORING_ERRORS)},
        body=_SCORING_BODY,
        parameters=parameters,
        description="MLflow's scoring protocol (`mlflow models serve`); on an LLM endpoint the"
        " OpenAI body of its task, as Databricks serving endpoints take.",
    )


def _llm(operation_id: str, summary: str, request: str, answer: str, stream: bool) -> Any:
    protocol = "anthropic" if request.startswith("Anthropic") else "openai"
    content: dict[str, Any] = {"application/json": {"schema": ref(answer)}}
    if stream:
        content["text/event-stream"] = {"schema": ref("EventStream")}
    statuses = (400, 401, 403, 404, 413, 429, 502, 503, 504, "4XX")
    return _operation(
        operation_id,
        summary,
        "anthropic" if protocol == "anthropic" else "openai",
        {
            "200": {
                "description": "The answer, or its stream when `stream` is true",
                "content": content,
            },
            **_errors(protocol, *statuses),
        },
        body={"required": True, "content": {"application/json": {"schema": ref(request)}}},
    )


def _open_get(operation_id: str, summary: str, tag: str, responses: dict[str, Any]) -> Any:
    return {"get": _operation(operation_id, summary, tag, responses, secured=False)}


def _health() -> dict[str, Any]:
    ping = {
        "200": {"description": "Models are loaded (the body is a newline, as MLflow's)"},
        "503": _json(ref("Status"), "Models are still loading"),
    }
    ready = {
        "200": _json(ref("Ready"), "Ready"),
        "503": _json(ref("Ready"), "Loading, or loading failed"),
    }
    metrics = {
        "description": "Prometheus text exposition (labels hold no secrets)",
        "content": {"text/plain": {"schema": {"type": "string"}}},
    }
    return {
        "/ping": _open_get("ping", "MLflow health check", "health", ping),
        "/health": _open_get("health", "Same as /ping", "health", ping),
        "/live": _open_get("live", "Liveness", "health", {"200": _json(ref("Status"), "Alive")}),
        "/ready": _open_get("ready", "Readiness, with the loaded endpoints", "health", ready),
        "/version": _open_get(
            "version",
            "MLflow's version, bare, as `mlflow models serve` answers",
            "health",
            {
                "200": {
                    "description": "The MLflow version",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                }
            },
        ),
        "/version/gateway": _open_get(
            "gatewayVersion",
            "Gateway and MLflow versions",
            "health",
            {"200": _json(ref("Version"), "Versions")},
        ),
        "/metrics": _open_get("metrics", "Prometheus metrics", "health", {"200": metrics}),
    }


def _admin() -> dict[str, Any]:
    errors = _errors("mlflow", 400, 401, 403, 503)
    usage_parameters = [
        _query("since", {"type": "string"}, "Epoch seconds, ISO date or ISO date-time (UTC)."),
        _query("until", {"type": "string"}, "Epoch seconds, ISO date or ISO date-time (UTC)."),
        {
            **_query(
                "group_by",
                {
                    "type": "array",
                    "items": {
                        "anyOf": [
                            {"enum": ["principal", "endpoint", "day"]},
                            {"type": "string", "pattern": "^tag:[A-Za-z0-9_.-]{1,64}$"},
                        ]
                    },
                },
                "Comma-separated grouping columns; `tag:KEY` groups by a request tag.",
            ),
            "style": "form",
            "explode": False,
        },
        _query("format", {"enum": ["json", "csv", "table"], "default": "json"}, "Answer format."),
    ]
    usage_answers = {
        "description": "Usage rows",
        "content": {
            "application/json": {"schema": ref("UsageRows")},
            "text/csv": {"schema": {"type": "string"}},
            "text/plain": {"schema": {"type": "string"}},
        },
    }
    return {
        "/admin/usage/recent": {
            "get": _operation(
                "recentUsage",
                "The latest usage events, from memory",
                "admin",
                {"200": _json(ref("UsageEvents"), "Events, oldest first"), **errors},
                parameters=[
                    _query("limit", {"type": "integer", "minimum": 0, "default": 100}, "How many.")
                ],
            )
        },
        "/admin/usage": {
            "get": _operation(
                "usage",
                "Usage from the ledger, grouped",
                "admin",
                {"200": usage_answers, **errors},
                parameters=usage_parameters,
            )
        },
        "/admin/reload": {
            "post": _operation(
                "reload",
                "Re-read the config file, or apply the YAML sent",
                "admin",
                {
                    "200": _json(ref("Applied"), "Applied"),
                    **_errors("mlflow", 400, 401, 403, 413, 503),
                },
                body={
                    "required": False,
                    "content": {"application/yaml": {"schema": {"type": "string"}}},
                },
                description="An empty body re-reads the config file. A refused config (400,"
                " with `issues`) changes nothing: the running config keeps serving.",
            )
        },
        "/admin/config": {
            "get": _operation(
                "config",
                "The running config (redacted) and the last reloads",
                "admin",
                {
                    "200": _json(ref("ConfigState"), "The running config"),
                    **_errors("mlflow", 401, 403, 503),
                },
            )
        },
    }


def _deployments() -> dict[str, Any]:
    """What `mlflow.deployments.get_deploy_client` reads, for an http target and Databricks."""
    one_errors = _errors("mlflow", 401, 403, 404, 503)
    serving_list = {
        "get": _operation(
            "listServingEndpoints",
            "The endpoints the caller may call, as Databricks lists serving endpoints",
            "deployments",
            {
                "200": _json(ref("ServingEndpointList"), "Serving endpoints"),
                **_errors("mlflow", 401, 503),
            },
        )
    }
    return {
        "/endpoints/{name}/invocations": {"post": _scoring("name", "invokeDeploymentsEndpoint")},
        "/api/2.0/endpoints/": {
            "get": _operation(
                "listMlflowEndpoints",
                "The endpoints the caller may call, one page, as MLflow's AI Gateway lists them",
                "deployments",
                {
                    "200": _json(ref("MlflowEndpointPage"), "A page of endpoints"),
                    **_errors("mlflow", 400, 401, 503),
                },
                parameters=[
                    _query(
                        "page_token",
                        {"type": "string"},
                        "The `next_page_token` of the previous page.",
                    )
                ],
            )
        },
        "/api/2.0/endpoints/{name}": {
            "get": _operation(
                "getMlflowEndpoint",
                "One endpoint, as MLflow's AI Gateway describes it",
                "deployments",
                {"200": _json(ref("MlflowEndpoint"), "The endpoint"), **one_errors},
                parameters=[_NAME],
            )
        },
        "/api/2.0/serving-endpoints": serving_list,
        "/api/2.0/serving-endpoints/": {
            "get": {**serving_list["get"], "operationId": "listServingEndpointsSlash"}
        },
        "/api/2.0/serving-endpoints/{name}": {
            "get": _operation(
                "getServingEndpoint",
                "One endpoint, as Databricks describes a serving endpoint",
                "deployments",
                {"200": _json(ref("ServingEndpoint"), "The endpoint"), **one_errors},
                parameters=[_NAME],
            )
        },
    }


def _docs() -> dict[str, Any]:
    html = {"description": "HTML", "content": {"text/html": {"schema": {"type": "string"}}}}
    asset = _open_get(
        "docsAsset",
        "A Swagger UI asset",
        "docs",
        {"200": {"description": "The file"}, **_errors("mlflow", 404)},
    )
    asset["get"]["parameters"] = [
        {"name": "file", "in": "path", "required": True, "schema": {"type": "string"}}
    ]
    return {
        "/": _open_get(
            "index", "Name, version and links", "docs", {"200": _json(ref("Index"), "The index")}
        ),
        "/openapi.json": _open_get(
            "openapi", "This document", "docs", {"200": _json({"type": "object"}, "OpenAPI 3.1")}
        ),
        "/docs": _open_get("docs", "Swagger UI", "docs", {"200": html}),
        "/docs/assets/{file}": asset,
    }


def _paths() -> dict[str, Any]:
    return {
        "/invocations": {"post": _scoring(None)},
        "/serving-endpoints/{name}/invocations": {"post": _scoring("name")},
        "/v1/chat/completions": {
            "post": _llm(
                "chatCompletions",
                "Chat completion",
                "ChatCompletionRequest",
                "ChatCompletion",
                True,
            )
        },
        "/v1/completions": {
            "post": _llm("completions", "Text completion", "CompletionRequest", "Completion", True)
        },
        "/v1/embeddings": {
            "post": _llm("embeddings", "Embeddings", "EmbeddingRequest", "EmbeddingList", False)
        },
        "/v1/models": {
            "get": _operation(
                "listModels",
                "The endpoints the caller may use, with their tasks (`custom`: MLflow scoring)",
                "openai",
                {"200": _json(ref("ModelList"), "Models"), **_errors("openai", 401, 503)},
            )
        },
        "/v1/messages": {
            "post": _llm(
                "messages",
                "Anthropic Messages, on any chat endpoint",
                "AnthropicMessagesRequest",
                "AnthropicMessage",
                True,
            )
        },
        **_deployments(),
        **_health(),
        **_admin(),
        **_docs(),
    }


@functools.cache
def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document, as a dict (built once; do not mutate it)."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "gateway",
            "version": __version__,
            "description": "One HTTP front door for every model: MLflow models, foundation and"
            " external LLMs. Authenticate with `Authorization: Bearer <key or JWT>` or"
            " `x-api-key`. Every routed answer carries `x-request-id`.",
        },
        "tags": [
            {"name": name, "description": text}
            for name, text in (
                ("scoring", "MLflow scoring protocol; errors in MLflow's shape"),
                ("deployments", "MLflow's deployments clients (http and Databricks targets)"),
                ("openai", "OpenAI-compatible; errors in OpenAI's shape"),
                ("anthropic", "Anthropic Messages; errors in Anthropic's shape"),
                ("health", "Open health and metrics routes"),
                ("admin", "Role `admin`; errors in MLflow's shape"),
                ("docs", "This document and its viewer"),
            )
        ],
        "paths": _paths(),
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API key (`gw-...`) or, when `auth.jwt` is set, a JWT.",
                },
                "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"},
            },
        },
        "security": [{"bearer": []}, {"apiKey": []}],
    }


@functools.cache
def openapi_document() -> bytes:
    """`/openapi.json`'s body."""
    return orjson.dumps(document())
