"""What lives as long as the process, across config versions, and what a handler is given."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.auth.keys import Principal
from gateway.config.reload import Reloader
from gateway.http import Request
from gateway.limits import Limiter
from gateway.metering.metrics import Metrics
from gateway.metering.recorder import UsageRecorder
from gateway.runtime import Runtime, RuntimeHolder


@dataclass(frozen=True, slots=True)
class GatewayState:
    runtimes: RuntimeHolder
    usage: UsageRecorder
    metrics: Metrics
    limiter: Limiter  # its counters outlive config versions
    reloader: Reloader

    def runtime_for(self, request: Request) -> Runtime:
        """The snapshot this request uses to its end (503 while loading); its version goes on
        the response."""
        runtime = self.runtimes.get()
        request.config_version = runtime.loaded.version
        return runtime


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling, authenticated by the app before the handler runs, and the config
    snapshot the request uses to its end."""

    runtime: Runtime
    principal: Principal
