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
from gateway.api import openapi_deployments
from gateway.api.openapi_operations import (
    errors,
    json,
    operation,
    query,
    scoring,
)
from gateway.api.openapi_schemas import SCHEMAS, ref

HEALTH_LINKS = ("/ping", "/health", "/live", "/ready", "/version")
# --- the operations, by area --------------------------------------------------------------------


def _llm(operation_id: str, summary: str, request: str, answer: str, stream: bool) -> Any:
    protocol = "anthropic" if request.startswith("Anthropic") else "openai"
    content: dict[str, Any] = {"application/json": {"schema": ref(answer)}}
    if stream:
        content["text/event-stream"] = {"schema": ref("EventStream")}
    statuses = (400, 401, 403, 404, 413, 429, 502, 503, 504, "4XX")
    return operation(
        operation_id,
        summary,
        "anthropic" if protocol == "anthropic" else "openai",
        {
            "200": {
                "description": "The answer, or its stream when `stream` is true",
                "content": content,
            },
            **errors(protocol, *statuses),
        },
        body={"required": True, "content": {"application/json": {"schema": ref(request)}}},
    )


def _open_get(operation_id: str, summary: str, tag: str, responses: dict[str, Any]) -> Any:
    return {"get": operation(operation_id, summary, tag, responses, secured=False)}


def _health() -> dict[str, Any]:
    ping = {
        "200": {"description": "Models are loaded (the body is a newline, as MLflow's)"},
        "503": json(ref("Status"), "Models are still loading"),
    }
    ready = {
        "200": json(ref("Ready"), "Ready"),
        "503": json(ref("Ready"), "Loading, or loading failed"),
    }
    metrics = {
        "description": "Prometheus text exposition (labels hold no secrets)",
        "content": {"text/plain": {"schema": {"type": "string"}}},
    }
    return {
        "/ping": _open_get("ping", "MLflow health check", "health", ping),
        "/health": _open_get("health", "Same as /ping", "health", ping),
        "/live": _open_get("live", "Liveness", "health", {"200": json(ref("Status"), "Alive")}),
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
            {"200": json(ref("Version"), "Versions")},
        ),
        "/metrics": _open_get("metrics", "Prometheus metrics", "health", {"200": metrics}),
    }


def _admin() -> dict[str, Any]:
    admin_errors = errors("mlflow", 400, 401, 403, 503)
    usage_parameters = [
        query("since", {"type": "string"}, "Epoch seconds, ISO date or ISO date-time (UTC)."),
        query("until", {"type": "string"}, "Epoch seconds, ISO date or ISO date-time (UTC)."),
        {
            **query(
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
        query("format", {"enum": ["json", "csv", "table"], "default": "json"}, "Answer format."),
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
            "get": operation(
                "recentUsage",
                "The latest usage events, from memory",
                "admin",
                {"200": json(ref("UsageEvents"), "Events, oldest first"), **admin_errors},
                parameters=[
                    query("limit", {"type": "integer", "minimum": 0, "default": 100}, "How many.")
                ],
            )
        },
        "/admin/usage": {
            "get": operation(
                "usage",
                "Usage from the ledger, grouped",
                "admin",
                {"200": usage_answers, **admin_errors},
                parameters=usage_parameters,
            )
        },
        "/admin/reload": {
            "post": operation(
                "reload",
                "Re-read the config file, or apply the YAML sent",
                "admin",
                {
                    "200": json(ref("Applied"), "Applied"),
                    **errors("mlflow", 400, 401, 403, 413, 503),
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
            "get": operation(
                "config",
                "The running config (redacted) and the last reloads",
                "admin",
                {
                    "200": json(ref("ConfigState"), "The running config"),
                    **errors("mlflow", 401, 403, 503),
                },
            )
        },
    }


def _docs() -> dict[str, Any]:
    html = {"description": "HTML", "content": {"text/html": {"schema": {"type": "string"}}}}
    asset = _open_get(
        "docsAsset",
        "A Swagger UI asset",
        "docs",
        {"200": {"description": "The file"}, **errors("mlflow", 404)},
    )
    asset["get"]["parameters"] = [
        {"name": "file", "in": "path", "required": True, "schema": {"type": "string"}}
    ]
    return {
        "/": _open_get(
            "index", "Name, version and links", "docs", {"200": json(ref("Index"), "The index")}
        ),
        "/openapi.json": _open_get(
            "openapi", "This document", "docs", {"200": json({"type": "object"}, "OpenAPI 3.1")}
        ),
        "/docs": _open_get("docs", "Swagger UI", "docs", {"200": html}),
        "/docs/assets/{file}": asset,
    }


def _paths() -> dict[str, Any]:
    return {
        "/invocations": {"post": scoring(None)},
        "/serving-endpoints/{name}/invocations": {"post": scoring("name")},
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
            "get": operation(
                "listModels",
                "The endpoints the caller may use, with their tasks (`custom`: MLflow scoring)",
                "openai",
                {"200": json(ref("ModelList"), "Models"), **errors("openai", 401, 503)},
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
        **openapi_deployments.paths(),
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
            "schemas": {**SCHEMAS, **openapi_deployments.SCHEMAS},
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
