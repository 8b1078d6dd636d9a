"""Which calls the inference table samples, and how a call becomes a row.

The top-level `inference_table:` section is read at start-up (where files go, how they are
flushed); the sampling policy of each endpoint (`sample_rate`, `max_payload_bytes`, `enabled`,
overridable per endpoint) is resolved with every runtime snapshot, so a reload changes it.

A row stores the response as the client received it: the bytes the app sent (the translated
body on `/v1/messages`, a stream's events as sent, its last error event included, an error's
rendered body), kept as they go out (`metering/sampling.py` SampledCall) and only up to
`max_payload_bytes`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from gateway.config.schema import EndpointConfig, GatewayConfig, InferenceTableConfig
from gateway.inference_tables.writer import InferenceRow, TableWriter
from gateway.metering.metrics import Metrics
from gateway.metering.sampling import Override, SamplingPolicy, clip, policies_by_endpoint
from gateway.metering.usage import UsageEvent

CapturePolicy = SamplingPolicy  # `max_payload_bytes` caps each of request and response


def capture_policies(config: GatewayConfig) -> Mapping[str, CapturePolicy]:
    """Each endpoint's policy; an endpoint that is not captured has none."""
    table = config.inference_table
    if table.path is None:
        return {}

    def override_of(endpoint: EndpointConfig) -> tuple[Override | None, int | None]:
        override = endpoint.inference_table
        return override, override.max_payload_bytes if override is not None else None

    return policies_by_endpoint(
        config.endpoints, table.sample_rate, table.max_payload_bytes, override_of
    )


class InferenceTables:
    """The gateway's inference table: rows from calls, written by a `TableWriter`."""

    def __init__(self, writer: TableWriter) -> None:
        self.writer = writer

    @classmethod
    def open(
        cls, config: InferenceTableConfig, base_dir: Path, metrics: Metrics
    ) -> InferenceTables:
        """A started writer under `config.path` (relative paths are taken from `base_dir`)."""
        assert config.path is not None
        writer = TableWriter(
            base_dir / config.path,  # an absolute path stays as it is
            flush_interval_s=config.flush_interval_s,
            max_file_bytes=config.max_file_bytes,
            max_queued=config.max_queued_rows,
            on_drop=metrics.inference_rows_dropped.inc,
            on_write=metrics.inference_rows_written.inc,
        )
        writer.start()
        return cls(writer)

    def offer(self, event: UsageEvent, limit: int, request: bytes, response: bytes) -> None:
        """Queue the call's row (never blocks; a full queue drops it)."""
        request_text, request_cut = clip(request, limit)
        response_text, response_cut = clip(response, limit)
        self.writer.offer(
            InferenceRow(
                endpoint=event.endpoint,
                request_id=event.request_id,
                client_request_id=event.client_request_id,
                time=event.time,
                served=event.served,
                served_endpoint=event.served_endpoint,
                principal=event.principal,
                principal_kind=event.principal_kind,
                status=event.status,
                latency_ms=event.latency_ms,
                prompt_tokens=event.prompt_tokens,
                completion_tokens=event.completion_tokens,
                tags=dict(event.tags),
                request=request_text,
                response=response_text,
                request_truncated=request_cut,
                response_truncated=response_cut,
            )
        )

    def close(self) -> None:
        self.writer.close()
