"""Per-token prices: from the config, else from litellm's bundled cost map (read as a file,
never fetched and without importing litellm)."""

from __future__ import annotations

import importlib.util
from functools import cache
from pathlib import Path
from typing import Any

import orjson

from gateway.config.schema import ExternalEndpointConfig, LLMEndpointConfig
from gateway.metering.usage import Price

_COST_MAP_FILE = "model_prices_and_context_window_backup.json"


def price_for(endpoint: LLMEndpointConfig) -> Price | None:
    if endpoint.pricing is not None:
        return Price(
            endpoint.pricing.input_per_million / 1e6, endpoint.pricing.output_per_million / 1e6
        )
    if isinstance(endpoint, ExternalEndpointConfig):
        return bundled_price(endpoint.provider, endpoint.model)
    return None


def bundled_price(provider: str, model: str) -> Price | None:
    costs = _bundled_cost_map()
    for key in (f"{provider}/{model}", model):
        entry = costs.get(key)
        if isinstance(entry, dict) and "input_cost_per_token" in entry:
            return Price(
                float(entry.get("input_cost_per_token") or 0.0),
                float(entry.get("output_cost_per_token") or 0.0),
            )
    return None


@cache
def _bundled_cost_map() -> dict[str, Any]:
    spec = importlib.util.find_spec("litellm")
    if spec is None or not spec.submodule_search_locations:
        return {}
    path = Path(next(iter(spec.submodule_search_locations))) / _COST_MAP_FILE
    try:
        loaded = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return {}
    return loaded if isinstance(loaded, dict) else {}
