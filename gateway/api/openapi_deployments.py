"""The OpenAPI paths and schemas of what MLflow's deployments clients read: MLflow's AI Gateway
protocol (`/api/2.0/endpoints`) and Databricks' serving endpoints (`/api/2.0/serving-endpoints`)."""

from __future__ import annotations

from typing import Any

from gateway.api.openapi_operations import NAME, errors, json, operation, query, scoring
from gateway.api.openapi_schemas import OPEN, Schema, ref

# MLflow's deployments clients: the AI Gateway's `Endpoint` and Databricks' serving endpoint.
_ENDPOINT_TYPE = {
    "enum": ["llm/v1/chat", "llm/v1/completions", "llm/v1/embeddings", "mlflow/v1/invocations"]
}
_SERVING_ROUTE = {
    "type": "object",
    "required": ["served_entity_name", "traffic_percentage"],
    "properties": {
        "served_entity_name": {"type": "string"},
        "served_model_name": {"type": "string"},
        "traffic_percentage": {"type": "integer", "minimum": 0, "maximum": 100},
    },
}
SCHEMAS: dict[str, Schema] = {
    "MlflowEndpoint": {
        "type": "object",
        "required": ["name", "endpoint_type", "model", "endpoint_url", "limit"],
        "properties": {
            "name": {"type": "string"},
            "endpoint_type": _ENDPOINT_TYPE,
            "model": {
                "type": "object",
                "required": ["name", "provider"],
                "properties": {"name": {"type": "string"}, "provider": {"type": "string"}},
            },
            "endpoint_url": {"type": "string", "examples": ["/endpoints/chat/invocations"]},
            "limit": {
                "anyOf": [
                    {
                        "type": "object",
                        "required": ["calls", "renewal_period"],
                        "properties": {
                            "calls": {"type": "integer", "minimum": 1},
                            "key": {"type": ["string", "null"]},
                            "renewal_period": {"enum": ["second", "minute", "hour", "day"]},
                        },
                    },
                    {"type": "null"},
                ]
            },
        },
    },
    "MlflowEndpointPage": {
        "type": "object",
        "required": ["endpoints"],
        "properties": {
            "endpoints": {"type": "array", "items": ref("MlflowEndpoint")},
            "next_page_token": {"type": "string", "description": "Absent on the last page."},
        },
    },
    "ServingEndpoint": {
        "type": "object",
        "required": ["name", "state", "config"],
        "properties": {
            "name": {"type": "string"},
            "id": {"type": "string"},
            "creator": {"type": "string"},
            "creation_timestamp": {"type": "integer"},
            "last_updated_timestamp": {"type": "integer"},
            "task": _ENDPOINT_TYPE,
            "state": {
                "type": "object",
                "required": ["ready"],
                "properties": {
                    "ready": {"enum": ["READY", "NOT_READY"]},
                    "config_update": {"type": "string"},
                },
            },
            "config": {
                "type": "object",
                "required": ["served_entities", "traffic_config"],
                "properties": {
                    "served_entities": {"type": "array", "items": OPEN},
                    "traffic_config": {
                        "type": "object",
                        "properties": {"routes": {"type": "array", "items": _SERVING_ROUTE}},
                    },
                    "config_version": {"type": "string"},
                },
            },
        },
    },
    "ServingEndpointList": {
        "type": "object",
        "required": ["endpoints"],
        "properties": {"endpoints": {"type": "array", "items": ref("ServingEndpoint")}},
    },
}


def paths() -> dict[str, Any]:
    """What `mlflow.deployments.get_deploy_client` reads, for an http target and Databricks."""
    one_errors = errors("mlflow", 401, 403, 404, 503)
    serving_list = {
        "get": operation(
            "listServingEndpoints",
            "The endpoints the caller may call, as Databricks lists serving endpoints",
            "deployments",
            {
                "200": json(ref("ServingEndpointList"), "Serving endpoints"),
                **errors("mlflow", 401, 503),
            },
        )
    }
    return {
        "/endpoints/{name}/invocations": {"post": scoring("name", "invokeDeploymentsEndpoint")},
        "/api/2.0/endpoints/": {
            "get": operation(
                "listMlflowEndpoints",
                "The endpoints the caller may call, one page, as MLflow's AI Gateway lists them",
                "deployments",
                {
                    "200": json(ref("MlflowEndpointPage"), "A page of endpoints"),
                    **errors("mlflow", 400, 401, 503),
                },
                parameters=[
                    query(
                        "page_token",
                        {"type": "string"},
                        "The `next_page_token` of the previous page.",
                    )
                ],
            )
        },
        "/api/2.0/endpoints/{name}": {
            "get": operation(
                "getMlflowEndpoint",
                "One endpoint, as MLflow's AI Gateway describes it",
                "deployments",
                {"200": json(ref("MlflowEndpoint"), "The endpoint"), **one_errors},
                parameters=[NAME],
            )
        },
        "/api/2.0/serving-endpoints": serving_list,
        "/api/2.0/serving-endpoints/": {
            "get": {**serving_list["get"], "operationId": "listServingEndpointsSlash"}
        },
        "/api/2.0/serving-endpoints/{name}": {
            "get": operation(
                "getServingEndpoint",
                "One endpoint, as Databricks describes a serving endpoint",
                "deployments",
                {"200": json(ref("ServingEndpoint"), "The endpoint"), **one_errors},
                parameters=[NAME],
            )
        },
    }
