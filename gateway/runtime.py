"""The runtime snapshot: everything a request needs, built from one config version.

A request reads `RuntimeHolder.current` once, at its start, and uses that snapshot to the end.
Building a snapshot may fail and then changes nothing; swapping one in cannot fail.
"""

from __future__ import annotations

import functools
import gc
import logging
import time
from collections.abc import Callable, Coroutine, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gateway.auth import KeyRing
from gateway.backends.custom_chat import CustomChatBackend
from gateway.backends.http_pool import SessionPool
from gateway.backends.llm import LLMBackend
from gateway.backends.mlflow_model import (
    CustomEndpoint,
    ReuseKey,
    ServedModel,
    load_served_model,
)
from gateway.backends.openai_compat import (
    OPENAI_FORMAT_PROVIDERS,
    OpenAICompatBackend,
    Target,
    azure_target,
    openai_target,
)
from gateway.config import (
    CustomEndpointConfig,
    ExternalEndpointConfig,
    FoundationEndpointConfig,
    JWTConfig,
    LLMEndpointConfig,
)
from gateway.config_file import LoadedConfig
from gateway.errors import ConfigError, ConfigIssue, EndpointNotFound, NotReady
from gateway.governance import Governor
from gateway.limits import Limiter, MemoryLimiter, RuleBook
from gateway.llm_endpoint import LLMEndpoint
from gateway.metering.pricing import price_for
from gateway.metrics import Metrics

if TYPE_CHECKING:
    from gateway.jwt_auth import JWTVerifier

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

    def endpoint(self, name: str) -> Endpoint:
        endpoint = self.endpoints.get(name)
        if endpoint is None:
            raise EndpointNotFound(f"Endpoint {name!r} does not exist.")
        return endpoint

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
        warm_ups = [
            warm
            for endpoint in self.llm_endpoints.values()
            if (warm := getattr(endpoint.backend, "warm_up", None)) is not None
        ]
        if self.keyring.jwt is not None:
            warm_ups.append(self.keyring.jwt.start)  # fetch the issuer's keys early
        return warm_ups

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
    custom = _load_custom_endpoints(loaded, reuse)
    # Upstream pools outlive config versions: a reload keeps its warm connections.
    sessions = previous.sessions if previous is not None else SessionPool()
    issues: list[ConfigIssue] = []
    endpoints: dict[str, Endpoint] = {}
    llm: dict[str, LLMEndpoint] = {}
    for i, endpoint_config in enumerate(config.endpoints):
        if isinstance(endpoint_config, CustomEndpointConfig):
            endpoint = custom[endpoint_config.name]
            endpoints[endpoint.name] = endpoint
            if endpoint.is_chat:
                llm[endpoint.name] = LLMEndpoint(
                    endpoint.name,
                    "chat",
                    CustomChatBackend(endpoint),
                    price=None,
                    timeout_s=300,
                    retries=0,
                )
            continue
        try:
            built = _llm_endpoint(endpoint_config, sessions)
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
        _discard_new(custom, reuse)
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
    )


def _jwt_verifier(config: JWTConfig, sessions: SessionPool) -> JWTVerifier:
    from gateway.jwt_auth import JWTVerifier

    if config.jwks_url is None:
        return JWTVerifier(config)
    return JWTVerifier(config, http=functools.partial(sessions.session_for, config.jwks_url))


def _discard_new(
    custom: Mapping[str, CustomEndpoint], reuse: Mapping[ReuseKey, ServedModel]
) -> None:
    kept = {id(model) for model in reuse.values()}
    for endpoint in custom.values():
        for served in endpoint.served:
            if id(served) not in kept:
                served.discard()


def _load_custom_endpoints(
    loaded: LoadedConfig, reuse: Mapping[ReuseKey, ServedModel]
) -> dict[str, CustomEndpoint]:
    """Load every served model, in parallel threads; ConfigError lists every failure."""
    config = loaded.config
    jobs = [
        (i, j, endpoint, served)
        for i, endpoint in enumerate(config.endpoints)
        if isinstance(endpoint, CustomEndpointConfig)
        for j, served in enumerate(endpoint.served_models)
    ]
    results: dict[tuple[int, int], ServedModel] = {}
    issues: list[ConfigIssue] = []
    if jobs:
        # Once, before the loader threads: concurrent first imports of MLflow's modules
        # deadlock on Python's import locks.
        import mlflow.pyfunc
        import mlflow.tracking  # noqa: F401
    with ThreadPoolExecutor(max(1, min(8, len(jobs)))) as pool:
        futures = {
            (i, j): pool.submit(
                load_served_model,
                served,
                endpoint,
                base_dir=loaded.base_dir,
                registry_uri=config.registry_uri,
                reuse=reuse,
            )
            for i, j, endpoint, served in jobs
        }
        for (i, j), future in futures.items():
            try:
                results[(i, j)] = future.result()
            except ValueError as exc:
                issues.append(ConfigIssue(f"endpoints[{i}].served_models[{j}].model", str(exc)))
    if issues:
        kept = {id(model) for model in reuse.values()}
        for model in results.values():
            if id(model) not in kept:
                model.discard()
        raise ConfigError(issues)
    return {
        endpoint.name: CustomEndpoint(
            endpoint.name,
            [results[(i, j)] for j in range(len(endpoint.served_models))],
            [served.traffic for served in endpoint.served_models],
        )
        for i, endpoint in enumerate(config.endpoints)
        if isinstance(endpoint, CustomEndpointConfig)
    }


def _llm_endpoint(config: LLMEndpointConfig, sessions: SessionPool) -> LLMEndpoint:
    return LLMEndpoint(
        config.name,
        config.task,
        _llm_backend(config, sessions),
        price=price_for(config),
        timeout_s=config.timeout_s,
        retries=config.retries,
        fallbacks=config.fallbacks,
        max_concurrent=config.provisioned.max_concurrent if config.provisioned else None,
        queue_timeout_s=config.provisioned.queue_timeout_s if config.provisioned else 1.0,
    )


def _llm_backend(config: LLMEndpointConfig, sessions: SessionPool) -> LLMBackend:
    if isinstance(config, FoundationEndpointConfig):
        targets = [
            openai_target(
                f"{config.name}/{i}",
                d.api_base,
                d.model,
                d.api_key.get_secret_value() if d.api_key else None,
            )
            for i, d in enumerate(config.deployments)
        ]
        return OpenAICompatBackend(targets, sessions, config.cooldown)
    if config.provider in OPENAI_FORMAT_PROVIDERS:
        return OpenAICompatBackend([_external_target(config)], sessions, config.cooldown)
    from gateway.backends.external import LiteLLMBackend

    return LiteLLMBackend(config)


def _external_target(config: ExternalEndpointConfig) -> Target:
    api_base = config.api_base or OPENAI_FORMAT_PROVIDERS[config.provider]
    if api_base is None:
        raise ValueError(f"provider {config.provider!r} needs an api_base")
    key = config.api_key.get_secret_value() if config.api_key else None
    label = f"{config.provider}/{config.model}"
    if config.provider == "azure":
        return azure_target(label, api_base, config.model, key, config.api_version)
    return openai_target(label, api_base, config.model, key)


def registry_moved(runtime: Runtime) -> list[str]:
    """Registry models (`@alias`, `/latest`) that now resolve to another version (blocking)."""
    from gateway.backends.mlflow_model import REGISTRY_SCHEME, resolve_model

    config = runtime.loaded.config
    serving = {
        served.reuse_key[0] for served in runtime.served_models().values() if served.reuse_key
    }
    moved = []
    for endpoint in config.endpoints:
        if not isinstance(endpoint, CustomEndpointConfig):
            continue
        for spec in endpoint.served_models:
            pinned = spec.model.rsplit("/", 1)[-1].isdigit()
            if not spec.model.startswith(REGISTRY_SCHEME) or pinned:
                continue
            resolved = resolve_model(
                spec.model, base_dir=runtime.loaded.base_dir, registry_uri=config.registry_uri
            )
            if resolved.load_uri not in serving:
                moved.append(f"{spec.model} → {resolved.label}")
    return moved


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
