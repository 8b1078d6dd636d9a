"""The durable usage ledger: every acknowledged request has its row, even after a SIGKILL.

A handler awaits `record(event)` before it sends its response. `record` returns once the event
is in the local spool: written to the kernel by default (`usage.durability: write`, which
survives the process being killed, SIGKILL included), or also fdatasynced (`fsync`, which
survives the host losing power; concurrent calls share one fdatasync: see `spool.py`). So a
response the client saw implies an event that outlives the process. A background writer moves
spooled events into the database in batches; inserts ignore request_ids already stored, so a
spool replayed after a crash (or a batch retried after a timeout that did commit) never
duplicates a row. A segment is deleted only once every event in it is committed. While the
database is down events wait in the spool and the writer retries with backoff; `stats()` shows
the backlog and the failures.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from gateway.errors import NotReady
from gateway.metering.spool import Spool
from gateway.metering.stores import Store, StoreError, open_store, sqlite_path
from gateway.metering.stores.schema import DEFAULT_TABLE, CorruptRecord, Row
from gateway.metering.stores.schema import decode as decode_row
from gateway.metering.stores.schema import encode as encode_event
from gateway.metering.usage import UsageEvent

if TYPE_CHECKING:
    from gateway.config.schema import UsageConfig

log = logging.getLogger("gateway.ledger")


class UsageNotRecorded(NotReady):
    """The event could not be made durable, so the request must not be acknowledged."""


@dataclass(frozen=True, slots=True)
class LedgerStats:
    backlog_events: int  # durable in the spool, not yet committed to the database
    backlog_bytes: int
    spool_segments: int
    recorded: int  # record() calls acknowledged since start
    spool_writes: int  # write + fdatasync rounds those took (group commit: far fewer under load)
    written: int  # events committed by this process, replays included (duplicates too)
    write_failures: int  # failed database writes (each one retried)
    corrupt_records: int  # spooled lines that were not events (skipped)
    last_error: str | None


class Ledger:
    """Usage events: appended to a local spool on `record`, then written to SQLite or Postgres.

    `start()` replays what an earlier process left in the spool (when the database is up) and
    starts the writer; `aclose()` drains the spool into the database. One process per spool
    directory (it is locked); `table` is for tests that need a table (or schema) of their own.
    """

    def __init__(
        self,
        url: str,
        spool_dir: Path,
        *,
        batch_size: int = 500,
        flush_interval_s: float = 0.2,
        table: str = DEFAULT_TABLE,
        segment_bytes: int = 8 << 20,
        retry_min_s: float = 0.1,
        retry_max_s: float = 30.0,
        fsync: bool = True,
    ) -> None:
        if batch_size < 1 or flush_interval_s <= 0:
            raise ValueError("batch_size must be >= 1 and flush_interval_s > 0")
        self._store: Store = open_store(url, table=table)
        self._spool = Spool(
            spool_dir, segment_bytes=segment_bytes, on_durable=self._on_durable, fsync=fsync
        )
        self._batch_size = batch_size
        self._interval = flush_interval_s
        self._retry = (retry_min_s, retry_max_s)
        self._wake = asyncio.Event()
        self._progress = asyncio.Condition()  # notified after each committed batch
        self._writer: asyncio.Task[None] | None = None
        self._accepting = False
        self._stopping = False
        self._closed = False
        self._flush_wanted = False
        self._recorded = self._written = self._failures = self._corrupt = 0
        self._last_error: str | None = None

    @classmethod
    def open(cls, config: UsageConfig, base_dir: Path) -> Ledger:
        """A ledger for `config` (not started yet); relative paths are taken from `base_dir`."""
        url = config.ledger
        path = sqlite_path(url)
        if path is not None and not path.is_absolute():
            url = f"sqlite:///{base_dir / path}"
        return cls(
            url,
            base_dir / config.spool_dir,  # an absolute spool_dir stays as it is
            batch_size=config.batch_size,
            flush_interval_s=config.flush_interval_ms / 1000,
            fsync=config.durability == "fsync",
        )

    async def start(self) -> None:
        await self._spool.open()
        if self._spool.backlog:
            log.info("replaying %d spooled usage events", self._spool.backlog)
            try:
                await self._drain()
            except StoreError as error:
                self._failed(error)  # they stay spooled; the writer keeps trying
        self._accepting = True
        self._writer = asyncio.create_task(self._run(), name="usage-ledger-writer")
        self._writer.add_done_callback(_report_crash)

    async def record(self, event: UsageEvent) -> None:
        """Return once `event` is on disk. Raises `UsageNotRecorded` (503) if it cannot be."""
        if not self._accepting:
            raise UsageNotRecorded("The usage ledger is not running.")
        try:
            await self._spool.append(encode_event(event))
        except OSError as error:
            raise UsageNotRecorded(f"Usage could not be recorded: {error}") from error
        self._recorded += 1

    async def flush(self) -> None:
        """Wait until every event recorded so far is in the database (forever if it is down:
        bound it with a timeout)."""
        if not self._accepting:
            raise RuntimeError("the usage ledger is not running")
        target = self._spool.position()
        self._flush_wanted = True
        self._wake.set()
        async with self._progress:
            await self._progress.wait_for(lambda: self._done(target) or self._closed)
        if not self._done(target):
            raise RuntimeError("the usage ledger closed before these events were written")

    def _done(self, target: tuple[int, int]) -> bool:
        return self._spool.committed() >= target

    async def query(
        self,
        since: float | None = None,
        until: float | None = None,
        group_by: Sequence[str] = (),
    ) -> list[dict[str, Any]]:
        """Per group over [since, until): requests, errors (status >= 400), prompt_tokens,
        completion_tokens, cost_usd, avg_latency_ms. Events still spooled are not counted."""
        return await self._store.query(since, until, group_by)

    async def rows(
        self, since: float | None = None, until: float | None = None, limit: int = 10_000
    ) -> list[dict[str, Any]]:
        """Stored events over [since, until), oldest first, shaped as `UsageEvent.as_dict()`."""
        return await self._store.rows(since, until, limit)

    def stats(self) -> LedgerStats:
        return LedgerStats(
            backlog_events=self._spool.backlog,
            backlog_bytes=self._spool.backlog_bytes(),
            spool_segments=self._spool.segments(),
            recorded=self._recorded,
            spool_writes=self._spool.writes,
            written=self._written,
            write_failures=self._failures,
            corrupt_records=self._corrupt,
            last_error=self._last_error,
        )

    async def aclose(self) -> None:
        """Stop taking events, then drain the spool into the database (one attempt: what
        cannot be written stays spooled for the next start)."""
        if self._closed:
            return
        self._closed = True
        self._accepting = False
        self._stopping = True
        self._wake.set()
        try:
            if self._writer is not None:
                await self._writer  # before our drain: the spool has a single reader
            await self._spool.seal()
            try:
                await self._drain()
            except StoreError as error:
                self._failed(error)
                log.warning("%d usage events stay spooled for the next start", self._spool.backlog)
        finally:
            await self._spool.aclose()
            await self._store.aclose()
            async with self._progress:
                self._progress.notify_all()  # a flush() still waiting learns it never will

    async def __aenter__(self) -> Ledger:
        await self.start()
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # --- the writer ----------------------------------------------------------------------------

    def _on_durable(self) -> None:
        if self._spool.backlog >= self._batch_size:
            self._wake.set()

    def _has_work(self) -> bool:
        return self._flush_wanted or self._spool.backlog >= self._batch_size

    async def _run(self) -> None:
        delay = self._retry[0]
        while not self._stopping:
            await self._sleep(self._interval, wake_on_work=True)
            if self._stopping:
                return
            try:
                await self._drain()
            except StoreError as error:
                self._failed(error)
                await self._sleep(delay, wake_on_work=False)  # only stopping cuts a backoff
                delay = min(delay * 2, self._retry[1])
            else:
                delay = self._retry[0]

    async def _sleep(self, seconds: float, *, wake_on_work: bool) -> None:
        deadline = asyncio.get_running_loop().time() + seconds
        while not self._stopping and not (wake_on_work and self._has_work()):
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(deadline):
                    await self._wake.wait()
            if asyncio.get_running_loop().time() >= deadline:
                return

    async def _drain(self) -> None:
        """Write every spooled event to the database, batch by batch."""
        while (batch := await self._spool.take(self._batch_size)) is not None:
            rows = self._decode(batch.lines)
            if rows:
                await self._store.insert(rows)
            await self._spool.commit(batch)
            self._written += len(rows)
            self._corrupt += len(batch.lines) - len(rows)
            async with self._progress:
                self._progress.notify_all()
        self._flush_wanted = False

    def _decode(self, lines: list[bytes]) -> list[Row]:
        rows: list[Row] = []
        for line in lines:
            try:
                rows.append(decode_row(line))
            except CorruptRecord as error:
                log.error("skipping a spooled line that is not a usage event: %s", error)
        return rows

    def _failed(self, error: StoreError) -> None:
        self._failures += 1
        self._last_error = str(error)
        log.warning("usage ledger write failed (%d spooled): %s", self._spool.backlog, error)


def _report_crash(task: asyncio.Task[None]) -> None:
    # A bug, not an outage (those are retried): say so now, not only when aclose() re-raises it.
    if not task.cancelled() and task.exception() is not None:
        log.error("usage ledger writer stopped", exc_info=task.exception())
