"""The runtime snapshot: everything a request needs, built from one config version.

A request reads `RuntimeHolder.current` once, at its start, and uses that snapshot to the end.
Building a snapshot may fail and then changes nothing; swapping one in cannot fail.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from gateway.auth import KeyRing
from gateway.backends.mlflow_model import CustomEndpoint, ServedModel, load_served_model
from gateway.config_file import LoadedConfig
from gateway.errors import ConfigError, ConfigIssue, EndpointNotFound, NotReady

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Runtime:
    loaded: LoadedConfig
    keyring: KeyRing
    endpoints: Mapping[str, CustomEndpoint]
    default_endpoint: str | None

    def endpoint(self, name: str) -> CustomEndpoint:
        endpoint = self.endpoints.get(name)
        if endpoint is None:
            raise EndpointNotFound(f"Endpoint {name!r} does not exist.")
        return endpoint

    def default(self) -> CustomEndpoint:
        if self.default_endpoint is None:
            raise EndpointNotFound(
                "No default endpoint is configured: set `default: true` on one endpoint,"
                " or call /serving-endpoints/{name}/invocations."
            )
        return self.endpoints[self.default_endpoint]

    async def aclose(self) -> None:
        for endpoint in self.endpoints.values():
            await endpoint.aclose()


def build_runtime(loaded: LoadedConfig) -> Runtime:
    """Load every model of the config (blocking; models load in parallel threads).

    Raises ConfigError listing every model that failed, by YAML path.
    """
    config = loaded.config
    jobs = [
        (i, j, endpoint, served)
        for i, endpoint in enumerate(config.endpoints)
        for j, served in enumerate(endpoint.served_models)
    ]
    results: dict[tuple[int, int], ServedModel] = {}
    issues: list[ConfigIssue] = []
    with ThreadPoolExecutor(max(1, min(8, len(jobs)))) as pool:
        futures = {
            (i, j): pool.submit(
                load_served_model,
                served,
                endpoint,
                base_dir=loaded.base_dir,
                registry_uri=config.registry_uri,
            )
            for i, j, endpoint, served in jobs
        }
        for (i, j), future in futures.items():
            try:
                results[(i, j)] = future.result()
            except ValueError as exc:
                issues.append(ConfigIssue(f"endpoints[{i}].served_models[{j}].model", str(exc)))
    if issues:
        for model in results.values():
            model.discard()
        raise ConfigError(issues)

    endpoints = {
        endpoint.name: CustomEndpoint(
            endpoint.name,
            [results[(i, j)] for j in range(len(endpoint.served_models))],
            [served.traffic for served in endpoint.served_models],
        )
        for i, endpoint in enumerate(config.endpoints)
    }
    default = next((e.name for e in config.endpoints if e.default), None)
    if default is None and len(config.endpoints) == 1:
        default = config.endpoints[0].name  # one endpoint: /invocations is unambiguous
    return Runtime(
        loaded=loaded, keyring=KeyRing(config.auth), endpoints=endpoints, default_endpoint=default
    )


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
