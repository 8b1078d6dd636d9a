"""The OpenAPI document (`/openapi.json`, `/docs`), built with FastAPI on first request.

The hot routes are served by the pure-ASGI router; the operations declared here only describe
them, which is why their bodies are never run.
"""

from __future__ import annotations

from typing import Any

from gateway import __version__

_SCORING_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "description": "Exactly one of dataframe_split, dataframe_records, instances,"
                " inputs (plus optional params); or an LLM-shaped body (messages, prompt, input).",
                "properties": {
                    "dataframe_split": {"type": "object"},
                    "dataframe_records": {"type": "array", "items": {"type": "object"}},
                    "instances": {},
                    "inputs": {},
                    "params": {"type": "object"},
                    "messages": {"type": "array", "items": {"type": "object"}},
                },
            },
            "example": {"dataframe_split": {"columns": ["x"], "data": [[1.0]]}},
        },
        "text/csv": {"schema": {"type": "string"}},
        "application/vnd.apache.parquet": {"schema": {"type": "string", "format": "binary"}},
    },
}
_MLFLOW_ERROR = {
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {"error_code": {"type": "string"}, "message": {"type": "string"}},
            }
        }
    }
}
_SCORING_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": '`{"predictions": ...}` (unwrapped for LLM-shaped inputs)'},
    400: {"description": "Bad input (BAD_REQUEST, INVALID_PARAMETER_VALUE)", **_MLFLOW_ERROR},
    401: {"description": "Missing or unknown API key", **_MLFLOW_ERROR},
    403: {"description": "Key not allowed on this endpoint", **_MLFLOW_ERROR},
    404: {"description": "Unknown endpoint", **_MLFLOW_ERROR},
    413: {"description": "Body over the configured size limit", **_MLFLOW_ERROR},
    415: {"description": "Unsupported content type", **_MLFLOW_ERROR},
    503: {"description": "Models still loading", **_MLFLOW_ERROR},
}


def build_docs_app() -> Any:
    from fastapi import FastAPI

    app = FastAPI(
        title="gateway",
        version=__version__,
        description="One HTTP front door for every model: MLflow models, foundation and external"
        " LLMs. Authenticate with `Authorization: Bearer <key>` or `x-api-key`.",
    )

    def described_only() -> None:  # pragma: no cover - the ASGI router answers these paths
        raise RuntimeError("served by the gateway's router")

    for path, summary in (
        ("/serving-endpoints/{name}/invocations", "Score an endpoint"),
        ("/invocations", "Score the default endpoint"),
    ):
        app.post(
            path,
            tags=["scoring"],
            summary=summary,
            openapi_extra={"requestBody": _SCORING_BODY},
            responses=_SCORING_RESPONSES,
        )(described_only)
    for path, summary in (
        ("/ping", "MLflow health check: 200 once models are loaded"),
        ("/health", "Same as /ping"),
        ("/live", "Liveness: the process answers"),
        ("/ready", "Readiness: 200 with the loaded endpoints, 503 while loading"),
        ("/version", "Gateway and MLflow versions"),
    ):
        app.get(path, tags=["health"], summary=summary)(described_only)
    return app
