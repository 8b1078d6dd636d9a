"""Which calls an observer samples: one policy per endpoint, resolved with each runtime.

The inference table and tracing share the shape: a top-level `sample_rate` and payload cap,
which an endpoint may override or switch off (`enabled: false`). A reload rebuilds the
policies, so changing a rate needs no restart.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from gateway.config.schema import EndpointConfig, LLMEndpointBase


@dataclass(frozen=True, slots=True)
class SamplingPolicy:
    sample_rate: float
    max_payload_bytes: int  # payloads longer than this are cut (and flagged)
    kind: str = ""  # what the endpoint serves: chat, completions, embeddings or custom

    def sampled(self) -> bool:
        return self.sample_rate >= 1.0 or random.random() < self.sample_rate


class Override(Protocol):
    """An endpoint's override of the top-level policy (`inference_table:`, `tracing:`)."""

    @property
    def enabled(self) -> bool: ...

    @property
    def sample_rate(self) -> float | None: ...


def policies_by_endpoint(
    endpoints: tuple[EndpointConfig, ...],
    sample_rate: float,
    max_payload_bytes: int,
    override_of: Callable[[EndpointConfig], tuple[Override | None, int | None]],
) -> Mapping[str, SamplingPolicy]:
    """Each endpoint's policy; an endpoint that samples nothing has none.

    `override_of` gives the endpoint's override and its payload cap, if it sets one.
    """
    policies = {}
    for endpoint in endpoints:
        override, payload_cap = override_of(endpoint)
        if override is not None and not override.enabled:
            continue
        rate = sample_rate
        if override is not None and override.sample_rate is not None:
            rate = override.sample_rate
        if rate > 0:
            kind = endpoint.task if isinstance(endpoint, LLMEndpointBase) else "custom"
            policies[endpoint.name] = SamplingPolicy(rate, payload_cap or max_payload_bytes, kind)
    return policies


def clip(payload: bytes, limit: int) -> tuple[str, bool]:
    """`payload` as text, cut to `limit` bytes; and whether it was cut."""
    if len(payload) <= limit:
        return payload.decode("utf-8", "replace"), False
    # A cut may split a UTF-8 character: its tail is dropped, not replaced.
    return payload[:limit].decode("utf-8", "ignore"), True
