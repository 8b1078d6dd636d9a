"""Which calls become traces: each endpoint's sampling policy, rebuilt with every runtime."""

from __future__ import annotations

from collections.abc import Mapping

from gateway.config.schema import EndpointConfig, GatewayConfig
from gateway.metering.sampling import Override, SamplingPolicy, policies_by_endpoint

TracePolicy = SamplingPolicy  # `max_payload_bytes` caps each of the request and response previews


def trace_policies(config: GatewayConfig) -> Mapping[str, TracePolicy]:
    """Each traced endpoint's policy; none when no tracing destination is configured."""
    tracing = config.tracing
    if tracing.mlflow is None:
        return {}

    def override_of(endpoint: EndpointConfig) -> tuple[Override | None, int | None]:
        override = endpoint.tracing
        return override, override.max_preview_bytes if override is not None else None

    return policies_by_endpoint(
        config.endpoints, tracing.sample_rate, tracing.max_preview_bytes, override_of
    )
