"""What MLflow's deployments clients list: `get_deploy_client("http://gateway")` reads
`/api/2.0/endpoints/` (MLflow AI Gateway's shape), `get_deploy_client("databricks")` reads
`/api/2.0/serving-endpoints` (Databricks' shape). Both show only the endpoints the caller may call.

An endpoint's type follows its task (`llm/v1/chat`, ...); a custom endpoint whose models are all
ChatModels is a chat endpoint, as on `/v1/models`, and any other custom endpoint is
`mlflow/v1/invocations` (MLflow's scoring protocol).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

import orjson

from gateway.config.schema import (
    EndpointConfig,
    ExternalEndpointConfig,
    FoundationEndpointConfig,
    LimitsConfig,
)
from gateway.errors import InvalidParameterValue
from gateway.http import Request, Response
from gateway.models.served import CustomEndpoint
from gateway.runtime import Endpoint, Runtime
from gateway.state import Caller, GatewayState

PAGE_SIZE = 100  # endpoints per page of /api/2.0/endpoints/ (MLflow's client follows the token)
ENDPOINT_TYPES = {
    "chat": "llm/v1/chat",
    "completions": "llm/v1/completions",
    "embeddings": "llm/v1/embeddings",
    "custom": "mlflow/v1/invocations",
}
# MLflow's `Limit` holds one call rate: the first of these the endpoint's limits set.
_RATES = (
    ("requests_per_minute", "minute"),
    ("requests_per_second", "second"),
    ("requests_per_hour", "hour"),
    ("requests_per_day", "day"),
)


def visible(caller: Caller) -> list[str]:
    """The names of the endpoints the caller may call, in config order."""
    return [name for name in caller.runtime.endpoints if caller.principal.may_call(name)]


def _named(caller: Caller, name: str) -> tuple[Endpoint, EndpointConfig]:
    runtime = caller.runtime
    endpoint = runtime.endpoint(name)
    runtime.keyring.authorize(caller.principal, name)
    return endpoint, _configs(runtime)[name]


def _configs(runtime: Runtime) -> dict[str, EndpointConfig]:
    return {config.name: config for config in runtime.loaded.config.endpoints}


# --- MLflow's deployments client (http target) ------------------------------------------------


async def list_endpoints(request: Request, state: GatewayState, caller: Caller) -> Response:
    """`GET /api/2.0/endpoints/`: one page, and `next_page_token` while more follow."""
    names = visible(caller)
    start = _page_start(request)
    page = names[start : start + PAGE_SIZE]
    configs = _configs(caller.runtime)
    body: dict[str, Any] = {
        "endpoints": [_mlflow_endpoint(caller.runtime, configs[name]) for name in page]
    }
    if start + PAGE_SIZE < len(names):
        body["next_page_token"] = str(start + PAGE_SIZE)
    return Response(200, orjson.dumps(body))


async def get_endpoint(request: Request, state: GatewayState, caller: Caller) -> Response:
    """`GET /api/2.0/endpoints/{name}`."""
    _, config = _named(caller, request.path_params["name"])
    return Response(200, orjson.dumps(_mlflow_endpoint(caller.runtime, config)))


def _page_start(request: Request) -> int:
    query = parse_qs(request.scope.get("query_string", b"").decode("latin-1"))
    token = query.get("page_token", [""])[-1]
    if not token:
        return 0
    if not token.isdecimal() or len(token) > 9:
        raise InvalidParameterValue(f"Invalid page_token {token!r}.")
    return int(token)


def _mlflow_endpoint(runtime: Runtime, config: EndpointConfig) -> dict[str, Any]:
    name = config.name
    return {
        "name": name,
        "endpoint_type": ENDPOINT_TYPES[runtime.task(name)],
        "model": _model(runtime.endpoints[name], config),
        "endpoint_url": f"/endpoints/{name}/invocations",
        "limit": _limit(config.limits),
    }


def _model(endpoint: Endpoint, config: EndpointConfig) -> dict[str, str]:
    if isinstance(endpoint, CustomEndpoint):
        return {"name": endpoint.served[0].label, "provider": "mlflow"}
    if isinstance(config, ExternalEndpointConfig):
        return {"name": config.model, "provider": config.provider}
    assert isinstance(config, FoundationEndpointConfig)
    return {"name": config.deployments[0].model, "provider": "openai-compatible"}


def _limit(limits: LimitsConfig | None) -> dict[str, Any] | None:
    if limits is None:
        return None
    for field, period in _RATES:
        rate = getattr(limits, field)
        if rate is not None:
            return {"calls": max(1, int(rate)), "key": None, "renewal_period": period}
    return None


# --- Databricks' serving endpoints ------------------------------------------------------------


async def list_serving_endpoints(request: Request, state: GatewayState, caller: Caller) -> Response:
    """`GET /api/2.0/serving-endpoints`: every endpoint the caller may call (no paging)."""
    configs = _configs(caller.runtime)
    endpoints = [_serving_endpoint(caller.runtime, configs[name]) for name in visible(caller)]
    return Response(200, orjson.dumps({"endpoints": endpoints}))


async def get_serving_endpoint(request: Request, state: GatewayState, caller: Caller) -> Response:
    """`GET /api/2.0/serving-endpoints/{name}`."""
    _, config = _named(caller, request.path_params["name"])
    return Response(200, orjson.dumps(_serving_endpoint(caller.runtime, config)))


def _serving_endpoint(runtime: Runtime, config: EndpointConfig) -> dict[str, Any]:
    name = config.name
    endpoint = runtime.endpoints[name]
    entities, routes = _served_entities(endpoint, config)
    loaded_ms = int(runtime.loaded_at * 1000)
    answer: dict[str, Any] = {
        "name": name,
        "id": name,
        "creator": "gateway",
        "creation_timestamp": loaded_ms,
        "last_updated_timestamp": loaded_ms,
        "state": {
            "ready": "READY" if _ready(endpoint) else "NOT_READY",
            "config_update": "NOT_UPDATING",
        },
        "config": {
            "served_entities": entities,
            "traffic_config": {"routes": routes},
            "config_version": runtime.loaded.version,
        },
    }
    task = runtime.task(name)
    if task != "custom":
        answer["task"] = ENDPOINT_TYPES[task]
    return answer


def _served_entities(
    endpoint: Endpoint, config: EndpointConfig
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The served entities and the traffic routes between them."""
    if isinstance(endpoint, CustomEndpoint):
        entities = [_model_entity(served.label) for served in endpoint.served]
        weights = list(endpoint.weights)
    else:
        model = _model(endpoint, config)
        external = {**model, "task": ENDPOINT_TYPES[endpoint.task]}
        entities = [{"name": model["name"], "external_model": external}]
        weights = [100]
    total = sum(weights) or 1
    routes = [
        {
            "served_entity_name": entity["name"],
            "served_model_name": entity["name"],
            "traffic_percentage": round(100 * weight / total),
        }
        for entity, weight in zip(entities, weights, strict=True)
    ]
    return entities, routes


def _model_entity(label: str) -> dict[str, Any]:
    """A registry model's label is `name/version`; a local model's is its path."""
    entity: dict[str, Any] = {"name": label, "entity_name": label}
    name, _, version = label.rpartition("/")
    if name and version.isdecimal() and not label.startswith(("/", ".")):
        entity["entity_name"], entity["entity_version"] = name, version
    return entity


def _ready(endpoint: Endpoint) -> bool:
    """Loaded custom models are ready; an LLM endpoint is when its backend says so (litellm is
    imported; not every deployment is cooling down)."""
    if isinstance(endpoint, CustomEndpoint):
        return True
    return endpoint.backend.describe().get("ready") is not False
