"""The runtime snapshot: everything a request needs, built from one config version.

A request reads `RuntimeHolder.current` once, at its start, and uses that snapshot to the end.
Building a snapshot may fail and then changes nothing; swapping one in cannot fail.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from gateway.auth.keys import KeyRing
from gateway.config.loading import LoadedConfig
from gateway.config.schema import CustomEndpointConfig, JWTConfig, Task
from gateway.errors import ConfigError, ConfigIssue, EndpointNotFound, NotReady
from gateway.inference_tables.capture import CapturePolicy, capture_policies
from gateway.limits import Limiter, MemoryLimiter, RuleBook
from gateway.limits.governor import Governor
from gateway.llm.endpoint import LLMEndpoint
from gateway.metering.metrics import Metrics
from gateway.metering.tokens import count_tokens
from gateway.models.loading import discard_new, load_custom_endpoints
from gateway.models.served import CustomEndpoint, ReuseKey, ServedModel
from gateway.providers.custom_chat import CustomChatBackend
from gateway.providers.http_pool import SessionPool
from gateway.tracing.policy import TracePolicy, trace_policies

if TYPE_CHECKING:
    from gateway.auth.jwt import JWTVerifier

logger = logging.getLogger(__name__)

Endpoint = CustomEndpoint | LLMEndpoint


@dataclass(frozen=True, slots=True)
class Runtime:
    loaded: LoadedConfig
    keyring: KeyRing
    endpoints: Mapping[str, Endpoint]
    llm_endpoints: Mapping[str, LLMEndpoint]  # LLM endpoints and chat-capable custom ones
    default_endpoint: str | None
    sessions: SessionPool
    loaded_at: float  # epoch seconds
    governor: Governor
    capture: Mapping[str, CapturePolicy]  # the inference table's policy, by endpoint
    tracing: Mapping[str, TracePolicy]  # which calls become traces, by endpoint

    def endpoint(self, name: str) -> Endpoint:
        endpoint = self.endpoints.get(name)
        if endpoint is None:
            raise EndpointNotFound(f"Endpoint {name!r} does not exist.")
        return endpoint

    def task(self, name: str) -> Task | Literal["custom"]:
        """What `name` does, as listings show it: an LLM task (a custom endpoint whose models
        are all ChatModels is a chat endpoint), else `custom` (MLflow's scoring protocol)."""
        llm = self.llm_endpoints.get(name)
        return llm.task if llm is not None else "custom"

    def llm_endpoint(self, name: str) -> LLMEndpoint:
        endpoint = self.llm_endpoints.get(name)
        if endpoint is None:
            if name in self.endpoints:
                raise EndpointNotFound(f"Endpoint {name!r} is not an LLM or chat endpoint.")
            raise EndpointNotFound(f"The model {name!r} does not exist.")
        return endpoint

    def default(self) -> Endpoint:
        if self.default_endpoint is None:
            raise EndpointNotFound(
                "No default endpoint is configured: set `default: true` on one endpoint,"
                " or call /serving-endpoints/{name}/invocations."
            )
        return self.endpoints[self.default_endpoint]

    def warm_ups(self) -> list[Callable[[], Coroutine[Any, Any, None]]]:
        """Slow preparations that need not delay readiness (litellm's import)."""
        warm_ups = [endpoint.backend.warm_up for endpoint in self.llm_endpoints.values()]
        if self.keyring.jwt is not None:
            warm_ups.append(self.keyring.jwt.start)  # fetch the issuer's keys early
        if self.llm_endpoints and self.governor.rules.reserves_tokens:
            warm_ups.append(_load_tokenizer)  # token limits and budgets count every prompt
        return warm_ups

    def serving_models(self) -> set[str]:
        """The loaded models' identities (`models:/name/3`, or a folder): a moved registry alias
        points to another one."""
        return {key[0] for key in self.served_models()}

    def served_models(self) -> dict[ReuseKey, ServedModel]:
        """The loaded models, by where they came from: what a reload may reuse."""
        return {
            served.reuse_key: served
            for endpoint in self.endpoints.values()
            if isinstance(endpoint, CustomEndpoint)
            for served in endpoint.served
            if served.reuse_key is not None
        }

    async def retire(self, successor: Runtime) -> None:
        """Close what this runtime has and `successor` does not use (models, the JWT verifier)."""
        kept = {id(model) for model in successor.served_models().values()}
        for model in self.served_models().values():
            if id(model) not in kept:
                await model.aclose()
        if self.keyring is not successor.keyring:
            await self.keyring.aclose()

    async def aclose(self) -> None:
        for endpoint in self.endpoints.values():
            await endpoint.aclose()
        await self.keyring.aclose()
        await self.sessions.aclose()


def build_runtime(
    loaded: LoadedConfig,
    *,
    limiter: Limiter | None = None,
    metrics: Metrics | None = None,
    previous: Runtime | None = None,
) -> Runtime:
    """Load every model and prepare every upstream of the config (blocking: call from a thread).

    Raises ConfigError listing every problem, by YAML path.
    """
    config = loaded.config
    reuse = previous.served_models() if previous is not None else {}
    custom = load_custom_endpoints(
        config.endpoints,
        base_dir=loaded.base_dir,
        registry_uri=config.registry_uri,
        reuse=reuse,
    )
    # Upstream pools outlive config versions: a reload keeps its warm connections.
    sessions = previous.sessions if previous is not None else SessionPool()
    issues: list[ConfigIssue] = []
    endpoints: dict[str, Endpoint] = {}
    llm: dict[str, LLMEndpoint] = {}
    for i, endpoint_config in enumerate(config.endpoints):
        if isinstance(endpoint_config, CustomEndpointConfig):
            endpoint = endpoints[endpoint_config.name] = custom[endpoint_config.name]
            if endpoint.is_chat:
                llm[endpoint.name] = _chat_endpoint(endpoint)
            continue
        try:
            built = LLMEndpoint.from_config(endpoint_config, sessions)
        except ValueError as exc:
            issues.append(ConfigIssue(f"endpoints[{i}]", str(exc)))
            continue
        endpoints[built.name] = llm[built.name] = built
    jwt = None
    if config.auth is not None and config.auth.jwt is not None:
        try:
            jwt = _jwt_verifier(config.auth.jwt, sessions)
        except ValueError as exc:
            issues.append(ConfigIssue("auth.jwt", str(exc)))
    if issues:
        discard_new((m for e in custom.values() for m in e.served), reuse)
        raise ConfigError(issues)

    default = next(
        (e.name for e in config.endpoints if isinstance(e, CustomEndpointConfig) and e.default),
        None,
    )
    if default is None and len(custom) == 1:
        default = next(iter(custom))  # one custom endpoint: /invocations is unambiguous
    return Runtime(
        loaded=loaded,
        keyring=KeyRing(config.auth, config.groups, jwt),
        endpoints=endpoints,
        llm_endpoints=llm,
        default_endpoint=default,
        sessions=sessions,
        loaded_at=time.time(),
        governor=Governor(
            limiter=limiter or MemoryLimiter(),
            rules=RuleBook(config),
            on_store_error=config.limits.on_store_error,
            metrics=metrics or Metrics(),
        ),
        capture=capture_policies(config),
        tracing=trace_policies(config),
    )


async def _load_tokenizer() -> None:
    await asyncio.to_thread(count_tokens, ["warm up"])


def _chat_endpoint(endpoint: CustomEndpoint) -> LLMEndpoint:
    """A custom endpoint whose models are all ChatModels, reachable as a chat endpoint too."""
    return LLMEndpoint(
        endpoint.name, "chat", CustomChatBackend(endpoint), price=None, timeout_s=300, retries=0
    )


def _jwt_verifier(config: JWTConfig, sessions: SessionPool) -> JWTVerifier:
    from gateway.auth.jwt import JWTVerifier

    if config.jwks_url is None:
        return JWTVerifier(config)
    return JWTVerifier(config, http=functools.partial(sessions.session_for, config.jwks_url))


def freeze_loaded_objects() -> None:
    """Exempt what is loaded now (models, libraries) from the cyclic garbage collector.

    A loaded model is hundreds of thousands of objects that never become garbage; every full
    collection walked them all, stalling every request in flight for 100-150 ms (measured).
    Unfreezing first lets the objects of a retired runtime be collected after a reload.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()


class RuntimeHolder:
    """Holds the one live snapshot; the only state swapped at run time."""

    def __init__(self) -> None:
        self.current: Runtime | None = None
        self.failure: ConfigError | None = None

    def get(self) -> Runtime:
        runtime = self.current
        if runtime is None:
            raise NotReady("The gateway is starting: models are still loading.")
        return runtime
