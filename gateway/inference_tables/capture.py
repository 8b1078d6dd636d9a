"""Which calls the inference table samples, and how a call becomes a row.

The top-level `inference_table:` section is read at start-up (where files go, how they are
flushed); the sampling policy of each endpoint (`sample_rate`, `max_payload_bytes`, `enabled`,
overridable per endpoint) is resolved with every runtime snapshot, so a reload changes it.

A row stores the response as the client received it: the bytes the app sent (the translated
body on `/v1/messages`, a stream's events as sent, its last error event included, an error's
rendered body), kept as they go out and only up to `max_payload_bytes`.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from gateway.config.schema import GatewayConfig, InferenceTableConfig
from gateway.inference_tables.writer import InferenceRow, TableWriter
from gateway.metering.metrics import Metrics
from gateway.metering.usage import UsageEvent


@dataclass(frozen=True, slots=True)
class CapturePolicy:
    sample_rate: float
    max_payload_bytes: int

    def sampled(self) -> bool:
        return self.sample_rate >= 1.0 or random.random() < self.sample_rate


def capture_policies(config: GatewayConfig) -> Mapping[str, CapturePolicy]:
    """Each endpoint's policy; an endpoint that is not captured has none."""
    table = config.inference_table
    if table.path is None:
        return {}
    policies = {}
    for endpoint in config.endpoints:
        override = endpoint.inference_table
        if override is not None and not override.enabled:
            continue
        rate = table.sample_rate
        limit = table.max_payload_bytes
        if override is not None:
            rate = override.sample_rate if override.sample_rate is not None else rate
            limit = override.max_payload_bytes or limit
        if rate > 0:
            policies[endpoint.name] = CapturePolicy(rate, limit)
    return policies


def _clip(payload: bytes, limit: int) -> tuple[str, bool]:
    if len(payload) <= limit:
        return payload.decode("utf-8", "replace"), False
    # A cut may split a UTF-8 character: its tail is dropped, not replaced.
    return payload[:limit].decode("utf-8", "ignore"), True


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

    def sample(self, policy: CapturePolicy) -> Capture | None:
        """The row of a call, if `policy` samples it."""
        return Capture(self, policy) if policy.sampled() else None

    def offer(self, event: UsageEvent, limit: int, request: bytes, response: bytes) -> None:
        """Queue the call's row (never blocks; a full queue drops it)."""
        request_text, request_cut = _clip(request, limit)
        response_text, response_cut = _clip(response, limit)
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


class Capture:
    """One sampled call's row, completed by two parties in either order: the meter, when the
    call ends (`finished`: its usage event), and the app, as it sends the response (`chunk`,
    then `sent`). The row is queued once both have; a client that left before the call ended
    does not lose it.

    Of the response, only the first `max_payload_bytes` + 1 bytes are kept (the one more says
    it was cut), so a long stream costs no more memory than a short one.
    """

    __slots__ = ("_chunks", "_event", "_request", "_room", "_sent", "_tables", "limit")

    def __init__(self, tables: InferenceTables, policy: CapturePolicy) -> None:
        self._tables = tables
        self.limit = policy.max_payload_bytes
        self._room = self.limit + 1
        self._chunks: list[bytes] = []
        self._event: UsageEvent | None = None
        self._request = b""
        self._sent = False

    def chunk(self, body: bytes) -> None:
        if self._room > 0 and body:
            kept = body[: self._room]
            self._chunks.append(kept)
            self._room -= len(kept)

    def sent(self) -> None:
        self._sent = True
        self._offer()

    def finished(self, event: UsageEvent, request: bytes) -> None:
        self._event, self._request = event, request
        self._offer()

    def _offer(self) -> None:
        event = self._event
        if event is None or not self._sent:
            return
        self._event = None  # once
        self._tables.offer(event, self.limit, self._request, b"".join(self._chunks))
