"""Sends trace records to MLflow in batches, from one thread, never from the request path.

`offer` puts a record in a bounded queue and returns at once: when MLflow is slow or down the
queue fills and further records are dropped (counted), so the gateway keeps serving at full
speed. The thread sends up to `batch_size` traces per request, at least every
`flush_interval_s`; a batch that fails for a reason that may pass (a connection error, a 5xx) is
retried with backoff, then dropped. The first failure of an outage is logged, and the recovery;
nothing in between floods the log.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable

from gateway.tracing.mlflow_server import ExportFailed, MlflowServer
from gateway.tracing.otlp import export_request
from gateway.tracing.record import TraceRecord

logger = logging.getLogger(__name__)

RETRY_DELAYS_S = (0.5, 2.0, 5.0)  # then the batch is dropped


class TraceExporter:
    def __init__(
        self,
        server: MlflowServer,
        *,
        batch_size: int,
        flush_interval_s: float,
        max_queued: int,
        on_export: Callable[[int], None] = lambda traces: None,
        on_drop: Callable[[str, int], None] = lambda reason, traces: None,
    ) -> None:
        self._server = server
        self._batch_size = batch_size
        self._interval = flush_interval_s
        self._max_queued = max_queued
        # A deque, not a queue.Queue: appending takes no lock and wakes nobody, so the thread
        # runs (and takes the GIL from the event loop) once per batch or interval, not per trace.
        self._queued: collections.deque[TraceRecord] = collections.deque()
        self._wake = threading.Event()  # a full batch is waiting, or close() was called
        self._on_export = on_export
        self._on_drop = on_drop
        self._stopping = threading.Event()
        self._failing = False  # in an outage: logged when it began, logged again when it ends
        self._thread = threading.Thread(target=self._run, name="trace-exporter", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def offer(self, record: TraceRecord) -> bool:
        """Queue `record`; False (and counted) when the queue is full."""
        queued = len(self._queued)
        if queued >= self._max_queued:
            self._on_drop("queue_full", 1)
            return False
        self._queued.append(record)
        if queued + 1 == self._batch_size:
            self._wake.set()
        return True

    def close(self) -> None:
        """Send what is queued, then stop (blocking). Once a send fails while stopping, the rest
        is dropped: a shutdown waits at most one export timeout for an unreachable MLflow."""
        if self._thread.is_alive():
            self._stopping.set()
            self._wake.set()
            self._thread.join()
        self._server.close()

    def _run(self) -> None:
        while True:
            stopping = self._stopping.is_set()
            if not stopping:
                self._wake.wait(self._interval)
                self._wake.clear()
            while batch := self._take(self._batch_size):
                if not self._send(batch) and self._stopping.is_set():
                    self._drop_queued()
                    return
            if stopping:
                return

    def _take(self, count: int) -> list[TraceRecord]:
        batch: list[TraceRecord] = []
        while len(batch) < count:
            try:
                batch.append(self._queued.popleft())
            except IndexError:
                break
        return batch

    def _drop_queued(self) -> None:
        dropped = len(self._take(len(self._queued)))
        if dropped:
            self._on_drop("export_failed", dropped)

    def _send(self, batch: list[TraceRecord]) -> bool:
        """Whether MLflow took `batch` (or it was invalid: a retry cannot help it)."""
        try:
            body = export_request(batch)
        except Exception:  # a record that cannot be shaped must not stop the thread
            logger.exception("could not build a trace batch of %d calls", len(batch))
            self._on_drop("invalid", len(batch))
            return True
        delays = () if self._stopping.is_set() else RETRY_DELAYS_S
        for delay in (*delays, None):
            try:
                self._server.export(body)
            except ExportFailed as exc:
                self._failed(exc)
                if not exc.retry or delay is None or self._stopping.wait(delay):
                    self._on_drop("export_failed" if exc.retry else "rejected", len(batch))
                    return False
                continue
            if self._failing:
                self._failing = False
                logger.warning("traces reach %s again", self._server.where)
            self._on_export(len(batch))
            return True
        return False

    def _failed(self, exc: ExportFailed) -> None:
        if not self._failing:
            self._failing = True
            logger.warning(
                "cannot send traces to %s (%s): retrying, then dropping them"
                " (gateway_traces_dropped_total counts them)",
                self._server.where,
                exc,
            )
