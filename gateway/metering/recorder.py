"""Where each request's usage event goes: recent memory, metrics, and the durable ledger.

`record` returns once the event is in the ledger's spool (written, or fsynced with
`usage.durability: fsync`), so a handler that awaits it before acknowledging a request never
acknowledges one whose usage could be lost with the process.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from gateway.auth.keys import Principal
from gateway.config.schema import InferenceTableConfig, TracingConfig, UsageConfig
from gateway.inference_tables import CapturePolicy, InferenceTables
from gateway.metering.ledger import Ledger
from gateway.metering.metrics import Metrics
from gateway.metering.sampling import SampledCall
from gateway.metering.spool import SpoolBusy
from gateway.metering.usage import RecentUsage, UsageEvent
from gateway.tracing import MlflowServer, TraceExporter, TracePolicy

logger = logging.getLogger(__name__)

MAX_WORKER_SPOOLS = 64


class UsageRecorder:
    def __init__(self, metrics: Metrics) -> None:
        self.recent = RecentUsage()
        self.metrics = metrics
        self.ledger: Ledger | None = None
        self.tables: InferenceTables | None = None
        self.tracer: TraceExporter | None = None
        # Endings of calls whose client left: they must finish (settle, record) regardless,
        # and the loop keeps only weak references to tasks.
        self._endings: set[asyncio.Task[None]] = set()

    def keep(self, ending: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run `ending` as a task that nobody's cancellation stops; `aclose` waits for it."""
        task = asyncio.ensure_future(ending)
        self._endings.add(task)
        task.add_done_callback(self._endings.discard)
        return task

    async def open_ledger(self, config: UsageConfig, base_dir: Path) -> None:
        """Start the ledger on the first free worker spool (`spool_dir/worker-N`).

        Each process needs a spool of its own; taking the first free one (not one named by
        PID) means a restarted worker takes over, and replays, the spool its predecessor left.
        """
        for index in range(MAX_WORKER_SPOOLS):
            worker_config = config.model_copy(
                update={"spool_dir": str(Path(config.spool_dir) / f"worker-{index}")}
            )
            ledger = Ledger.open(worker_config, base_dir)
            try:
                await ledger.start()
            except SpoolBusy:
                continue
            self.ledger = ledger
            return
        raise RuntimeError(f"every one of {MAX_WORKER_SPOOLS} worker spools is in use")

    def open_tables(self, config: InferenceTableConfig, base_dir: Path) -> None:
        """Start writing the inference table, if the config keeps one."""
        if config.path is not None:
            self.tables = InferenceTables.open(config, base_dir, self.metrics)

    def open_tracing(self, config: TracingConfig) -> None:
        """Start sending traces, if the config names a destination."""
        if config.mlflow is None:
            return
        dropped = self.metrics.traces_dropped
        self.tracer = TraceExporter(
            MlflowServer(config.mlflow, config.timeout_s),
            batch_size=config.batch_size,
            flush_interval_s=config.flush_interval_s,
            max_queued=config.max_queued_traces,
            on_export=self.metrics.traces_exported.inc,
            on_drop=lambda reason, traces: dropped.labels(reason).inc(traces),
        )
        self.tracer.start()

    def sample(
        self, capture: CapturePolicy | None, trace: TracePolicy | None
    ) -> SampledCall | None:
        """What a call keeps for the inference table and tracing, if either samples it."""
        tables, tracer = self.tables, self.tracer
        row = None
        if tables is not None and capture is not None and capture.sampled():
            row = (capture.max_payload_bytes, tables.offer)
        traced = None
        if tracer is not None and trace is not None and trace.sampled():
            traced = (trace.max_payload_bytes, tracer.offer)
        if row is None and traced is None:
            return None
        return SampledCall(row, traced)

    async def record(self, event: UsageEvent, principal: Principal) -> None:
        self.recent.record(event)
        self.metrics.record(event, principal_label=principal.metrics_label)
        if self.ledger is not None:
            await self.ledger.record(event)

    async def aclose(self) -> None:
        if self._endings:
            await asyncio.gather(*self._endings, return_exceptions=True)
        if self.ledger is not None:
            await self.ledger.aclose()
        if self.tables is not None:
            await asyncio.to_thread(self.tables.close)  # writes every buffered row
        if self.tracer is not None:
            await asyncio.to_thread(self.tracer.close)  # sends every queued trace
