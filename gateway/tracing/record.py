"""What a sampled call hands to the trace exporter: its usage event, its payloads and timings.

Building the record costs a few attribute reads on the request path; everything else (parsing
payloads, shaping spans, JSON) happens on the exporter's thread.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.metering.usage import Price, UsageEvent


@dataclass(frozen=True, slots=True)
class CallerSpan:
    """The client's span from a W3C `traceparent` header: the trace links to it."""

    trace_id: str  # 32 lower-case hex digits
    span_id: str  # 16 lower-case hex digits


@dataclass(frozen=True, slots=True)
class TraceRecord:
    event: UsageEvent
    kind: str  # chat, completions, embeddings or custom: the model span's type
    start_ns: int  # epoch nanoseconds: the request's start and end
    end_ns: int
    call_start_ns: int  # the model or upstream call (retries and fallbacks included); 0: none
    call_end_ns: int
    request: bytes  # as the client sent it
    response: bytes  # as the client received it ("" when not kept)
    max_preview_bytes: int
    price: Price | None = None
    caller: CallerSpan | None = None


_HEX = frozenset("0123456789abcdef")


def caller_span(traceparent: bytes | None) -> CallerSpan | None:
    """The caller's span from `traceparent` (`00-<trace>-<span>-<flags>`); None if malformed."""
    if traceparent is None or len(traceparent) != 55:
        return None
    text = traceparent.decode("ascii", "replace")
    parts = text.split("-")
    if [len(part) for part in parts] != [2, 32, 16, 2]:
        return None
    version, trace_id, span_id, flags = parts
    if not _HEX.issuperset(version + trace_id + span_id + flags) or version == "ff":
        return None
    if trace_id == "0" * 32 or span_id == "0" * 16:  # the spec's invalid ids
        return None
    return CallerSpan(trace_id, span_id)
