"""uvicorn's options, built from the `server` section of the config.

The protocol is handed over as a `functools.partial` of `GatewayHttpProtocol` bound to its
limits: uvicorn calls it like a protocol class, and with `--workers` the partial is pickled into
each worker process (which then counts its own connections).
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any, cast

from gateway.config.schema import ServerConfig
from gateway.server.protocol import GatewayHttpProtocol, HeadLimits, WaitingConnections


def head_limits(server: ServerConfig) -> HeadLimits:
    return HeadLimits(
        max_header_bytes=server.max_header_bytes,
        max_headers=server.max_headers,
        header_timeout_s=server.header_timeout_s,
        max_connections=server.max_connections,
    )


def uvicorn_options(
    server: ServerConfig, *, host: str, port: int, log_level: str
) -> dict[str, Any]:
    """Keyword arguments for `uvicorn.Config` / `uvicorn.run` (the app aside)."""
    protocol = functools.partial(
        GatewayHttpProtocol, limits=head_limits(server), waiting=WaitingConnections()
    )
    return {
        "host": host,
        "port": port,
        "log_level": log_level,
        "access_log": False,
        "loop": "uvloop",
        "http": cast(type[asyncio.Protocol], protocol),  # called like the class it wraps
        "lifespan": "on",
        "timeout_keep_alive": server.keep_alive_s,
        # uvicorn's own limit_concurrency stays off: it counts connections still sending their
        # head, so held connections would turn /live into 503s; max_connections replaces it.
    }
