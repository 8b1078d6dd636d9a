"""The route table: for each path, its handler, the protocol its errors speak and who may call it.

No logic lives here. The app matches a path, then, before the handler runs, checks the route's
access: `open` routes run as they are; `key` routes need a valid API key or JWT; `admin` routes
need a principal with the admin role. Handlers of guarded routes receive the `Caller`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from gateway.api import admin, anthropic, deployments, docs, health, invocations, openai
from gateway.errors import Protocol
from gateway.http import Request, Response, StreamingResponse
from gateway.state import Caller, GatewayState

Answer = Awaitable[Response | StreamingResponse]
OpenHandler = Callable[[Request, GatewayState], Answer]
GuardedHandler = Callable[[Request, GatewayState, Caller], Answer]


# Open routes whose access the config may raise (`server.access`): the field that says.
AccessSetting = Literal["metrics", "docs", "version"]


@dataclass(frozen=True, slots=True)
class OpenRoute:
    """Answered for anyone who can reach the gateway (health checks), unless `setting` names
    a `server.access` field that asks for a key or the admin role."""

    path: str  # `{name}` matches one path segment
    methods: frozenset[str]
    handler: OpenHandler
    protocol: Protocol = "mlflow"
    access: Literal["open"] = "open"
    setting: AccessSetting | None = None


@dataclass(frozen=True, slots=True)
class Route:
    """Answered for an authenticated caller (`key`), or one with the admin role (`admin`)."""

    path: str
    methods: frozenset[str]
    handler: GuardedHandler
    protocol: Protocol = "mlflow"
    access: Literal["key", "admin"] = "key"


AnyRoute = OpenRoute | Route

GET, POST = frozenset({"GET", "HEAD"}), frozenset({"POST"})

ROUTES: tuple[AnyRoute, ...] = (
    # MLflow scoring protocol (and OpenAI bodies on LLM endpoints, as Databricks serves them)
    Route("/invocations", POST, invocations.invoke_default),
    Route("/serving-endpoints/{name}/invocations", POST, invocations.invoke_named),
    # MLflow's deployments clients: get_deploy_client("http://…") and ("databricks")
    Route("/endpoints/{name}/invocations", POST, invocations.invoke_named),
    Route("/api/2.0/endpoints/", GET, deployments.list_endpoints),
    Route("/api/2.0/endpoints/{name}", GET, deployments.get_endpoint),
    Route("/api/2.0/serving-endpoints", GET, deployments.list_serving_endpoints),
    Route("/api/2.0/serving-endpoints/", GET, deployments.list_serving_endpoints),
    Route("/api/2.0/serving-endpoints/{name}", GET, deployments.get_serving_endpoint),
    # OpenAI and Anthropic
    Route("/v1/chat/completions", POST, openai.chat_completions, "openai"),
    Route("/v1/completions", POST, openai.completions, "openai"),
    Route("/v1/embeddings", POST, openai.embeddings, "openai"),
    Route("/v1/models", GET, openai.list_models, "openai"),
    Route("/v1/messages", POST, anthropic.messages, "anthropic"),
    # health
    OpenRoute("/ping", GET, health.ping),
    OpenRoute("/health", GET, health.ping),
    OpenRoute("/live", GET, health.live),
    OpenRoute("/ready", GET, health.ready),
    OpenRoute("/version", GET, health.version, setting="version"),
    OpenRoute("/version/gateway", GET, health.gateway_version, setting="version"),
    # operations
    OpenRoute("/metrics", GET, admin.metrics, setting="metrics"),
    Route("/admin/usage/recent", GET, admin.recent_usage, access="admin"),
    Route("/admin/usage", GET, admin.usage, access="admin"),
    Route("/admin/reload", POST, admin.reload, access="admin"),
    Route("/admin/config", GET, admin.config, access="admin"),
    # documentation (assets from an installed package: it works offline)
    OpenRoute("/", GET, docs.index),
    OpenRoute("/openapi.json", GET, docs.openapi_json, setting="docs"),
    OpenRoute("/docs", GET, docs.docs, setting="docs"),
    OpenRoute("/docs/assets/{file}", GET, docs.asset, setting="docs"),
)
