"""The route table: path → handler and the protocol its errors speak. No logic lives here."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from gateway.api import admin, anthropic, health, invocations, openai
from gateway.http import Request, Response, StreamingResponse
from gateway.state import GatewayState

Handler = Callable[[Request, GatewayState], Awaitable[Response | StreamingResponse]]
Protocol = Literal["mlflow", "openai", "anthropic"]


@dataclass(frozen=True, slots=True)
class Route:
    path: str  # `{name}` matches one path segment
    methods: frozenset[str]
    handler: Handler
    protocol: Protocol = "mlflow"


GET, POST = frozenset({"GET", "HEAD"}), frozenset({"POST"})

ROUTES: tuple[Route, ...] = (
    Route("/invocations", POST, invocations.invoke_default),
    Route("/serving-endpoints/{name}/invocations", POST, invocations.invoke_named),
    Route("/ping", GET, health.ping),
    Route("/health", GET, health.ping),
    Route("/live", GET, health.live),
    Route("/ready", GET, health.ready),
    Route("/version", GET, health.version),
    Route("/v1/chat/completions", POST, openai.chat_completions, "openai"),
    Route("/v1/completions", POST, openai.completions, "openai"),
    Route("/v1/embeddings", POST, openai.embeddings, "openai"),
    Route("/v1/models", GET, openai.list_models, "openai"),
    Route("/v1/messages", POST, anthropic.messages, "anthropic"),
    Route("/admin/usage/recent", GET, admin.recent_usage),
    Route("/admin/usage", GET, admin.usage),
    Route("/metrics", GET, admin.metrics),
    Route("/admin/reload", POST, admin.reload),
    Route("/admin/config", GET, admin.config),
)

# Served by the (lazily built) documentation app.
DOCS_PATHS = frozenset({"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})
