"""Admin routes (role `admin`). Usage lives in memory until the ledger milestone."""

from __future__ import annotations

import orjson

from gateway.errors import BadRequest, PermissionDenied
from gateway.http import Request, Response
from gateway.state import GatewayState


async def recent_usage(request: Request, state: GatewayState) -> Response:
    runtime = state.runtimes.get()
    principal = await runtime.keyring.authenticate(
        request.header(b"authorization"), request.header(b"x-api-key")
    )
    if "admin" not in principal.roles:
        raise PermissionDenied(f"Key {principal.id!r} does not have the admin role.")
    limit = 100
    for pair in request.scope.get("query_string", b"").decode("latin-1").split("&"):
        name, _, value = pair.partition("=")
        if name == "limit":
            if not value.isdigit():
                raise BadRequest("'limit' must be a non-negative integer.")
            limit = int(value)
    events = [event.as_dict() for event in state.usage.latest(limit)]
    return Response(200, orjson.dumps({"data": events}))
