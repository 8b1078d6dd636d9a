"""What lives as long as the process, across config versions: runtimes and the usage sink."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from gateway.limits import Limiter
from gateway.metering.recorder import UsageRecorder
from gateway.metrics import Metrics
from gateway.runtime import RuntimeHolder


@dataclass(frozen=True, slots=True)
class GatewayState:
    runtimes: RuntimeHolder
    usage: UsageRecorder
    metrics: Metrics
    limiter: Limiter  # its counters outlive config versions
    # Tasks that must finish even if their request is cancelled (the loop holds weak refs).
    background: set[asyncio.Task[None]] = field(default_factory=set)
