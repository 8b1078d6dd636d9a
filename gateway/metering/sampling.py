"""Which calls the inference table and tracing sample, and what a sampled call keeps.

Both share the shape: a top-level `sample_rate` and payload cap, which an endpoint may override
or switch off (`enabled: false`); a reload rebuilds the policies, so changing a rate needs no
restart. A sampled call (`SampledCall`) keeps the response as the client received it.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from gateway.config.schema import EndpointConfig, LLMEndpointBase

if TYPE_CHECKING:
    from gateway.metering.usage import UsageEvent
    from gateway.tracing.record import TraceRecord


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


RowSink = Callable[["UsageEvent", int, bytes, bytes], None]  # (event, limit, request, response)
TraceSink = Callable[["TraceRecord"], object]  # its answer (queued or not) is not needed


class SampledCall:
    """One sampled call, completed by two parties in either order: the meter, when the call
    ends (`finished`: its usage event, and its trace record if it is traced), and the app, as it
    sends the response (`chunk` for each body chunk, then `sent`). Once both have, the call goes
    to the inference table (`row`: its payload cap) and to tracing (`traced`); a client that
    left before the call ended loses neither.

    Of the response only the first `keep` + 1 bytes are kept (the one more says it was cut),
    so a long stream costs no more memory than a short one.
    """

    __slots__ = (
        "_chunks",
        "_event",
        "_on_row",
        "_on_trace",
        "_request",
        "_room",
        "_row_limit",
        "_sent",
        "_trace",
        "traced",
    )

    def __init__(
        self,
        row: tuple[int, RowSink] | None,  # the table's payload cap and where rows go
        trace: tuple[int, TraceSink] | None,  # the previews' cap and where traces go
    ) -> None:
        self._row_limit = row[0] if row is not None else 0
        self._on_row: RowSink | None = row[1] if row is not None else None
        self._on_trace: TraceSink | None = trace[1] if trace is not None else None
        self.traced = trace is not None
        self._room = max(self._row_limit, trace[0] if trace is not None else 0) + 1
        self._chunks: list[bytes] = []
        self._event: UsageEvent | None = None
        self._trace: TraceRecord | None = None
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

    def finished(self, event: UsageEvent, request: bytes, trace: TraceRecord | None) -> None:
        self._event, self._request, self._trace = event, request, trace
        self._offer()

    def _offer(self) -> None:
        event = self._event
        if event is None or not self._sent:
            return
        self._event = None  # once
        response = b"".join(self._chunks)
        if self._on_row is not None:
            self._on_row(event, self._row_limit, self._request, response)
        if self._on_trace is not None and self._trace is not None:
            self._on_trace(dataclasses.replace(self._trace, response=response))
