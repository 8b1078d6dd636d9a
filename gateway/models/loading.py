"""Loading every custom endpoint of a config: its served models, in parallel threads.

A model the running config already serves, from the same place with the same serving settings,
is reused instead of loaded again (a reload keeps it warm).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from gateway.config.schema import CustomEndpointConfig, EndpointConfig
from gateway.errors import ConfigError, ConfigIssue
from gateway.models.served import CustomEndpoint, ReuseKey, ServedModel, load_served_model


def load_custom_endpoints(
    endpoints: tuple[EndpointConfig, ...],
    *,
    base_dir: Path,
    registry_uri: str | None,
    reuse: Mapping[ReuseKey, ServedModel],
) -> dict[str, CustomEndpoint]:
    """Every custom endpoint, by name (blocking); ConfigError lists every model that failed."""
    jobs = [
        (i, j, endpoint, served)
        for i, endpoint in enumerate(endpoints)
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
                base_dir=base_dir,
                registry_uri=registry_uri,
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
        discard_new(results.values(), reuse)
        raise ConfigError(issues)
    return {
        endpoint.name: CustomEndpoint(
            endpoint.name,
            [results[(i, j)] for j in range(len(endpoint.served_models))],
            [served.traffic for served in endpoint.served_models],
        )
        for i, endpoint in enumerate(endpoints)
        if isinstance(endpoint, CustomEndpointConfig)
    }


def discard_new(models: Iterable[ServedModel], reuse: Mapping[ReuseKey, ServedModel]) -> None:
    """Release the models loaded for a config that will not serve, keeping the reused ones."""
    kept = {id(model) for model in reuse.values()}
    for model in models:
        if id(model) not in kept:
            model.discard()
