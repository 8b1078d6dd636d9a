"""Writes inference-table rows as Parquet, off the request path.

Rows go into a bounded queue (`offer` never blocks: a full queue drops the row and says so);
one thread buffers them per (endpoint, date) and writes each buffer as one file
`root/endpoint=<name>/date=<YYYY-MM-DD>/part-<time>-<uuid>.parquet` when it reaches
`max_file_bytes`, every `flush_interval_s`, and on `close`. A file is written under a hidden
temporary name and renamed, so readers (pandas, DuckDB, Spark: Hive partitioning, where the
partition columns live in the path, not the file) never see half a file.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import astuple, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class InferenceRow:
    """One sampled call: the partition (`endpoint`, the UTC date of `time`) and the columns."""

    endpoint: str
    request_id: str
    client_request_id: str
    time: float  # epoch seconds at the request's start
    served: str
    served_endpoint: str
    principal: str
    principal_kind: str
    status: int
    latency_ms: float
    prompt_tokens: int
    completion_tokens: int
    tags: dict[str, str] = field(default_factory=dict)
    request: str = ""
    response: str = ""
    request_truncated: bool = False
    response_truncated: bool = False

    @property
    def size(self) -> int:
        """Roughly what the row adds to a file (its payloads dominate)."""
        return len(self.request) + len(self.response) + 256


def schema() -> pa.Schema:
    """The files' columns (pyarrow is imported only by a gateway that keeps a table)."""
    import pyarrow as pa

    return pa.schema(
        [
            ("request_id", pa.string()),
            ("client_request_id", pa.string()),
            ("time", pa.timestamp("us", tz="UTC")),
            ("served", pa.string()),
            ("served_endpoint", pa.string()),
            ("principal", pa.string()),
            ("principal_kind", pa.string()),
            ("status", pa.int32()),
            ("latency_ms", pa.float64()),
            ("prompt_tokens", pa.int64()),
            ("completion_tokens", pa.int64()),
            ("tags", pa.map_(pa.string(), pa.string())),
            ("request", pa.string()),
            ("response", pa.string()),
            ("request_truncated", pa.bool_()),
            ("response_truncated", pa.bool_()),
        ]
    )


_COLUMNS = [f.name for f in fields(InferenceRow)][1:]  # the partition's endpoint is the path
_STOP = object()


class TableWriter:
    """The queue and the thread that writes it; `close` writes whatever is buffered."""

    def __init__(
        self,
        root: Path,
        *,
        flush_interval_s: float,
        max_file_bytes: int,
        max_queued: int = 10_000,
        on_drop: Callable[[], None] = lambda: None,
        on_write: Callable[[int], None] = lambda rows: None,
    ) -> None:
        self.root = root
        self._interval = flush_interval_s
        self._max_file_bytes = max_file_bytes
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max_queued)
        self._on_drop = on_drop
        self._on_write = on_write
        self._buffers: dict[tuple[str, str], list[InferenceRow]] = {}
        self._sizes: dict[tuple[str, str], int] = {}
        self._schema = schema()
        self._thread = threading.Thread(target=self._run, name="inference-tables", daemon=True)

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self._thread.start()

    def offer(self, row: InferenceRow) -> bool:
        """Queue `row` for writing; False (and counted) when the queue is full."""
        try:
            self._queue.put_nowait(row)
        except queue.Full:
            self._on_drop()
            return False
        return True

    def close(self) -> None:
        """Write every queued and buffered row, then stop (blocking: call it off the loop)."""
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join()

    def _run(self) -> None:
        deadline = time.monotonic() + self._interval
        while True:
            try:
                item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                item = None
            if item is _STOP:
                self._flush_all()
                return
            if isinstance(item, InferenceRow):
                self._add(item)
            if time.monotonic() >= deadline:
                self._flush_all()
                deadline = time.monotonic() + self._interval

    def _add(self, row: InferenceRow) -> None:
        date = datetime.fromtimestamp(row.time, UTC).strftime("%Y-%m-%d")
        key = (row.endpoint, date)
        self._buffers.setdefault(key, []).append(row)
        self._sizes[key] = self._sizes.get(key, 0) + row.size
        if self._sizes[key] >= self._max_file_bytes:
            self._flush(key)

    def _flush_all(self) -> None:
        for key in list(self._buffers):
            self._flush(key)

    def _flush(self, key: tuple[str, str]) -> None:
        rows = self._buffers.pop(key, [])
        self._sizes.pop(key, None)
        if not rows:
            return
        try:
            self._write(key, rows)
        except Exception:  # a full disk must not stop the thread: later rows may fit
            logger.exception("could not write %d inference-table rows of %s", len(rows), key[0])
            for _ in rows:
                self._on_drop()
            return
        self._on_write(len(rows))

    def _write(self, key: tuple[str, str], rows: list[InferenceRow]) -> None:
        endpoint, date = key
        folder = self.root / f"endpoint={endpoint}" / f"date={date}"
        folder.mkdir(parents=True, exist_ok=True)
        columns = list(zip(*(astuple(row)[1:] for row in rows), strict=True))
        data: dict[str, list[Any]] = {
            name: list(column) for name, column in zip(_COLUMNS, columns, strict=True)
        }
        data["time"] = [datetime.fromtimestamp(t, UTC) for t in data["time"]]
        data["tags"] = [list(tags.items()) for tags in data["tags"]]
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pydict(data, schema=self._schema)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        name = f"part-{stamp}-{uuid.uuid4().hex}.parquet"
        temporary = folder / f".{name}.tmp"  # readers skip names starting with '.'
        pq.write_table(table, temporary)
        os.replace(temporary, folder / name)
