"""Admin routes (role `admin`, checked by the app): usage from the ledger, the latest events in
memory, config reloads and the active config; and `/metrics`, open by default."""

from __future__ import annotations

from urllib.parse import parse_qs

import orjson

from gateway.config.redaction import describe, redacted
from gateway.config.reload import Applied
from gateway.errors import BadRequest, ConfigError, ConfigRefused, NotReady
from gateway.http import Request, Response
from gateway.metering.query import UsageQuery
from gateway.metering.report import to_csv, to_table
from gateway.metering.stores import StoreError
from gateway.state import Caller, GatewayState


def _query(request: Request) -> dict[str, str]:
    parsed = parse_qs(request.scope.get("query_string", b"").decode("latin-1"))
    return {name: values[-1] for name, values in parsed.items()}


async def recent_usage(request: Request, state: GatewayState, caller: Caller) -> Response:
    limit = _query(request).get("limit", "100")
    if not (limit.isascii() and limit.isdigit()):  # str.isdigit alone takes "²", int() not
        raise BadRequest("'limit' must be a non-negative integer.")
    events = [event.as_dict() for event in state.usage.recent.latest(int(limit))]
    return Response(200, orjson.dumps({"data": events}))


async def usage(request: Request, state: GatewayState, caller: Caller) -> Response:
    """`GET /admin/usage?since=&until=&group_by=principal,endpoint,day&format=json|csv|table`."""
    params = _query(request)
    query = UsageQuery.parse(
        params.get("since"), params.get("until"), params.get("group_by"), params.get("format")
    )
    ledger = state.usage.ledger
    if ledger is None:
        raise NotReady("The usage ledger is not running.")
    try:
        rows = await ledger.query(query.since, query.until, query.group_by)
    except StoreError as exc:
        raise NotReady(f"The usage database is unavailable: {exc}") from exc
    if query.format == "csv":
        return Response(200, to_csv(rows).encode(), content_type=b"text/csv; charset=utf-8")
    if query.format == "table":
        return Response(200, to_table(rows).encode(), content_type=b"text/plain; charset=utf-8")
    return Response(200, orjson.dumps({"data": rows}))


async def metrics(request: Request, state: GatewayState) -> Response:
    """Prometheus exposition; open like the health routes (labels hold no secrets)."""
    ledger = state.usage.ledger
    if ledger is not None:
        stats = ledger.stats()
        state.metrics.ledger_queue_depth.set(stats.backlog_events)
        state.metrics.ledger_write_failures_total.set(stats.write_failures)
    return Response(200, state.metrics.exposition(), content_type=b"text/plain; version=0.0.4")


async def reload(request: Request, state: GatewayState, caller: Caller) -> Response:
    """`POST /admin/reload`: re-read the config file, or apply the YAML sent as the body."""
    body = await request.body(caller.runtime.loaded.config.server.max_body_bytes)
    text = body.decode("utf-8", "replace") if body.strip() else None
    try:
        applied = await state.reloader.reload(text)
    except ConfigError as exc:
        raise ConfigRefused(exc) from exc
    return Response(200, orjson.dumps({"applied": True, **_applied(applied)}))


async def config(request: Request, state: GatewayState, caller: Caller) -> Response:
    """`GET /admin/config`: the active version, the last reload's outcome, the redacted config."""
    runtime = caller.runtime
    reload_state = state.reloader.state
    body = {
        "version": runtime.loaded.version,
        "active": _applied(reload_state.active) if reload_state.active else None,
        "reloads": reload_state.reloads,
        "failed_reloads": reload_state.failures,
        "last_error": reload_state.last_error,
        "last_error_at": reload_state.last_error_at,
        "endpoints": describe(
            runtime.loaded, {name: e.describe() for name, e in runtime.endpoints.items()}
        ),
        "config": redacted(runtime.loaded),
    }
    return Response(200, orjson.dumps(body))


def _applied(applied: Applied) -> dict[str, object]:
    return {
        "version": applied.version,
        "applied_at": applied.applied_at,
        "changes": applied.changes,
    }
