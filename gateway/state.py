"""What lives as long as the process, across config versions: runtimes and the usage sink."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from gateway.auth import Principal
from gateway.http import Request
from gateway.limits import Limiter
from gateway.metering.recorder import UsageRecorder
from gateway.metrics import Metrics
from gateway.reload import Reloader
from gateway.runtime import Runtime, RuntimeHolder


@dataclass(frozen=True, slots=True)
class GatewayState:
    runtimes: RuntimeHolder
    usage: UsageRecorder
    metrics: Metrics
    limiter: Limiter  # its counters outlive config versions
    reloader: Reloader

    def runtime_for(self, request: Request) -> Runtime:
        """The snapshot this request uses to its end; its version goes on the response."""
        runtime = self.runtimes.get()
        request.config_version = runtime.loaded.version
        return runtime

    async def caller(self, request: Request) -> tuple[Runtime, Principal]:
        """The request's runtime snapshot and who is calling (401 when nobody valid)."""
        runtime = self.runtime_for(request)
        principal = await runtime.keyring.authenticate(
            request.header(b"authorization"), request.header(b"x-api-key")
        )
        return runtime, principal

    # Tasks that must finish even if their request is cancelled (the loop holds weak refs).
    background: set[asyncio.Task[None]] = field(default_factory=set)
