"""Trace records as an OTLP/JSON `ExportTraceServiceRequest`, in the attributes MLflow reads.

Each call is one trace of two spans: a root span for the gateway request (named after the
endpoint, type CHAIN) and a child span for the model or upstream call (named after the model
version or deployment that answered, with token usage and cost). MLflow derives the trace's
state from the root's status, its request and response previews from the root's
`mlflow.spanInputs`/`mlflow.spanOutputs`, `trace.info.token_usage` and cost from the child's
`mlflow.chat.tokenUsage`/`mlflow.llm.cost`, the user from `user.id`, and trace tags from the
root's `mlflow.traceTag.*` attributes.

Attribute values are sent as native OTLP values (a JSON payload becomes a key-value list):
MLflow JSON-encodes each value once on ingestion, exactly as its own `span.set_attribute` does.
"""

from __future__ import annotations

import secrets
from typing import Any

import orjson

from gateway.metering.sampling import clip
from gateway.tracing.record import TraceRecord

SPAN_KIND_SERVER = 2
SPAN_KIND_CLIENT = 3
STATUS_OK = 1
STATUS_ERROR = 2

# The model span's MLflow type, by what the endpoint serves.
MODEL_SPAN_TYPES = {
    "chat": "CHAT_MODEL",
    "completions": "LLM",
    "embeddings": "EMBEDDING",
    "custom": "UNKNOWN",
}
MAX_DEPTH = 32  # deeper JSON payloads are kept as text: MLflow renders them either way

Attribute = dict[str, Any]


def export_request(records: list[TraceRecord]) -> bytes:
    """The body of one POST to `/v1/traces` (`Content-Type: application/json`)."""
    spans: list[dict[str, Any]] = []
    for record in records:
        spans.extend(spans_of(record))
    document = {
        "resourceSpans": [
            {
                "resource": {"attributes": [_attribute("service.name", "gateway")]},
                "scopeSpans": [{"scope": {"name": "gateway"}, "spans": spans}],
            }
        ]
    }
    return orjson.dumps(document)


def spans_of(record: TraceRecord) -> list[dict[str, Any]]:
    event = record.event
    trace_id = secrets.token_hex(16)
    root_id = secrets.token_hex(8)
    failed = event.status >= 400
    status = (
        {"code": STATUS_ERROR, "message": f"HTTP {event.status}"} if failed else {"code": STATUS_OK}
    )
    request_value, request_cut = _payload(record.request, record.max_preview_bytes)
    response_value, response_cut = _payload(record.response, record.max_preview_bytes)
    tags = {
        "gateway.endpoint": event.endpoint,
        "gateway.served": event.served,
        "gateway.principal": event.principal,
        "gateway.request_id": event.request_id,
        "gateway.status": str(event.status),
    }
    for key, value in event.tags.items():
        if not key.startswith("mlflow."):  # MLflow's own tags are not the client's to set
            tags[key] = value
    attributes = [
        _attribute("mlflow.spanType", "CHAIN"),
        _raw("mlflow.spanInputs", request_value),
        _attribute("user.id", event.principal),
        _attribute("http.route", event.route),
        _attribute("http.response.status_code", event.status),
        _attribute("gateway.request_id", event.request_id),
        _attribute("gateway.endpoint", event.endpoint),
        _attribute("gateway.principal", event.principal),
        _attribute("gateway.principal_kind", event.principal_kind),
        _attribute("gateway.latency_ms", round(event.latency_ms, 3)),
        _attribute("gateway.overhead_ms", round(event.overhead_ms, 3)),
        _attribute("gateway.request_truncated", request_cut),
        _attribute("gateway.response_truncated", response_cut),
    ]
    if record.response:
        attributes.append(_raw("mlflow.spanOutputs", response_value))
    if event.client_request_id:
        attributes.append(_attribute("gateway.client_request_id", event.client_request_id))
    if event.rows:
        attributes.append(_attribute("gateway.rows", event.rows))
    attributes.extend(
        _attribute(f"mlflow.traceTag.{key}", value) for key, value in tags.items() if value
    )
    root: dict[str, Any] = {
        "traceId": trace_id,
        "spanId": root_id,
        "name": event.endpoint,
        "kind": SPAN_KIND_SERVER,
        "startTimeUnixNano": str(record.start_ns),
        "endTimeUnixNano": str(record.end_ns),
        "attributes": attributes,
        "status": status,
    }
    if record.caller is not None:
        # The caller's own trace is theirs: this one stays complete, and links back to it.
        root["links"] = [{"traceId": record.caller.trace_id, "spanId": record.caller.span_id}]
        attributes.append(_attribute("gateway.caller_trace_id", record.caller.trace_id))
    if not record.call_start_ns:
        return [root]  # refused before any model or upstream was called
    return [root, _model_span(record, trace_id, root_id, status)]


def _model_span(
    record: TraceRecord, trace_id: str, parent_id: str, status: dict[str, Any]
) -> dict[str, Any]:
    event = record.event
    attributes = [
        _attribute("mlflow.spanType", MODEL_SPAN_TYPES.get(record.kind, "UNKNOWN")),
        _attribute("gateway.served_endpoint", event.served_endpoint or event.endpoint),
        _attribute("gateway.fallback_used", event.fallback_used),
    ]
    if event.served:
        attributes.append(_attribute("mlflow.llm.model", event.served))
    if event.served_run_id:
        attributes.append(_attribute("gateway.run_id", event.served_run_id))
    if event.model_uuid:
        attributes.append(_attribute("gateway.model_uuid", event.model_uuid))
    if record.kind != "custom" or event.prompt_tokens or event.completion_tokens:
        usage = {
            "input_tokens": event.prompt_tokens,
            "output_tokens": event.completion_tokens,
            "total_tokens": event.prompt_tokens + event.completion_tokens,
        }
        attributes.append(_attribute("mlflow.chat.tokenUsage", usage))
        attributes.append(_attribute("gateway.tokens_estimated", event.estimated))
    if record.price is not None and event.cost_usd:
        input_cost = event.prompt_tokens * record.price.input_per_token
        output_cost = event.completion_tokens * record.price.output_per_token
        cost = {
            "input_cost": input_cost,
            "output_cost": output_cost,
            "total_cost": input_cost + output_cost,
        }
        attributes.append(_attribute("mlflow.llm.cost", cost))
    end_ns = record.call_end_ns or record.end_ns
    return {
        "traceId": trace_id,
        "spanId": secrets.token_hex(8),
        "parentSpanId": parent_id,
        "name": event.served or f"{event.endpoint} (no answer)",
        "kind": SPAN_KIND_CLIENT,
        "startTimeUnixNano": str(record.call_start_ns),
        "endTimeUnixNano": str(max(end_ns, record.call_start_ns)),
        "attributes": attributes,
        "status": status,
    }


def _payload(payload: bytes, limit: int) -> tuple[dict[str, Any], bool]:
    """A payload as an OTLP value: its JSON structure when whole and valid, else its text."""
    text, cut = clip(payload, limit)
    if not cut and payload[:1] in (b"{", b"["):
        try:
            return any_value(orjson.loads(payload)), False
        except (orjson.JSONDecodeError, RecursionError):
            pass
    return {"stringValue": text}, cut


def any_value(value: object, depth: int = 0) -> dict[str, Any]:
    """A JSON value as an OTLP `AnyValue` (checks ordered by frequency: this runs for every
    value of every traced payload)."""
    if isinstance(value, str):
        return {"stringValue": value}
    if isinstance(value, dict | list):
        if depth >= MAX_DEPTH:
            return {"stringValue": orjson.dumps(value).decode()}
        if isinstance(value, dict):
            pairs = [{"key": str(k), "value": any_value(v, depth + 1)} for k, v in value.items()]
            return {"kvlistValue": {"values": pairs}}
        return {"arrayValue": {"values": [any_value(v, depth + 1) for v in value]}}
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return (
            {"intValue": str(value)} if -(2**63) <= value < 2**63 else {"stringValue": str(value)}
        )
    if isinstance(value, float):
        return {"doubleValue": value}
    if value is None:
        return {}
    return {"stringValue": str(value)}


def _attribute(key: str, value: object) -> Attribute:
    return {"key": key, "value": any_value(value)}


def _raw(key: str, value: dict[str, Any]) -> Attribute:
    return {"key": key, "value": value}
