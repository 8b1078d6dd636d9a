"""An append-only, segmented queue of records on local disk: the ledger's journal.

Format: a directory of segments named `<12-digit sequence>.spool`, each a run of records, one
per line (the ledger writes JSON lines). Only the newest segment of the running process is
appended to; it is sealed when the next write would take it past `segment_bytes`, and a new
process always starts a new one, so a torn tail left by a crash stays at the end of a sealed
segment, where readers skip it. A `LOCK` file (flock) keeps two processes off one directory.

`append` returns once its record is written: with `fsync=False` straight to the kernel's page
cache, on the event loop (one small write; it survives the process dying, not the host); with
`fsync=True` on the disk, by group commit: write + fdatasync on the spool's own thread. While
one write is in flight, later appends wait together and the next write carries all of them, so
concurrent callers share one fdatasync.

Reading is a single cursor: `take` returns the records after the cursor (only what is durable),
`commit` moves the cursor past them and deletes each sealed segment the cursor has left behind.
The cursor lives in memory, so after a restart every remaining segment is read from its start;
the consumer must tolerate records it has seen before (the ledger's inserts are idempotent).
"""

from __future__ import annotations

import asyncio
import fcntl
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Final

SUFFIX: Final = ".spool"
_READ_CHUNK: Final = 64 * 1024


class SpoolBusy(RuntimeError):
    """Another process holds the spool directory."""


class SpoolClosed(RuntimeError):
    """The spool was sealed or closed; it takes no more records."""


@dataclass(frozen=True, slots=True)
class Batch:
    """Records of one segment from byte `start` to `end` (`lines` may be empty: a torn tail)."""

    segment: int
    start: int
    end: int
    lines: list[bytes]


class _Appender:
    """The segment being appended to. Used only on the spool's I/O thread."""

    def __init__(self, directory: Path, seq: int, fsync: bool = True) -> None:
        self._dir = directory
        self._fsync = fsync
        self.seq = seq - 1
        self.size = 0
        self.fd = -1
        self.rotate()

    def rotate(self) -> None:
        seq = self.seq + 1
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC
        fd = os.open(self._dir / f"{seq:012d}{SUFFIX}", flags, 0o600)
        _fsync_dir(self._dir)  # the new name must survive a crash, or so would not its records
        if self.fd >= 0:
            os.close(self.fd)
        self.seq, self.size, self.fd = seq, 0, fd

    def append(self, data: bytes) -> None:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self.fd, view) :]
            if self._fsync:
                os.fdatasync(self.fd)
        except OSError:
            # After a failed write or fsync this file's tail cannot be trusted: cut it back to
            # the last acknowledged byte and continue in a fresh segment.
            try:
                os.ftruncate(self.fd, self.size)
                self.rotate()
            except OSError:
                pass  # the next append retries the file as it is; readers stop at `size`
            raise
        self.size += len(data)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class Spool:
    def __init__(
        self,
        directory: Path,
        *,
        segment_bytes: int = 8 << 20,
        on_durable: Callable[[], None] | None = None,
        fsync: bool = True,
    ) -> None:
        self.directory = directory
        # fsync: records reach the disk before `append` returns (power loss safe), written by
        # the I/O thread in group commits. Without: they reach the kernel (safe when only the
        # process dies), written inline: an append to the page cache costs microseconds.
        self._fsync = fsync
        self._segment_bytes = segment_bytes
        self._on_durable = on_durable
        # Own threads: an fsync must never queue behind other work in the default executor.
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger-spool")
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger-spool-read")
        self._appender: _Appender | None = None
        self._lock_fd = -1
        self._sizes: dict[int, int] = {}  # live segment -> durable bytes, in sequence order
        self._active = -1  # the segment appended to; -1 once sealed
        self._cursor = (0, 0)  # (segment, offset): everything before it is committed
        self._pending: list[bytes] = []
        self._waiters: list[asyncio.Future[None]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._sealed = False
        self.backlog = 0  # durable records not yet committed (lines, counting the unreadable)
        self.writes = 0  # write + fdatasync rounds: records / writes is the group-commit size

    async def open(self) -> None:
        """Lock the directory, take stock of earlier segments and start a new one."""
        loop = asyncio.get_running_loop()
        self._lock_fd, self._sizes, self.backlog = await loop.run_in_executor(
            self._io, _lock_and_scan, self.directory
        )
        self._appender = await loop.run_in_executor(
            self._io, _Appender, self.directory, max(self._sizes, default=0) + 1, self._fsync
        )
        self._active = self._appender.seq
        self._sizes[self._active] = 0
        self._cursor = (min(self._sizes), 0)

    async def append(self, record: bytes) -> None:
        """Return once `record` is on disk; raises OSError if it could not be written."""
        if self._sealed or self._appender is None:
            raise SpoolClosed(f"spool {self.directory} is closed")
        if not self._fsync:
            self._append_inline(record)
            return
        waiter = asyncio.get_running_loop().create_future()
        self._pending.append(record)
        self._waiters.append(waiter)
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush(), name="ledger-spool-flush")
        await waiter

    def _append_inline(self, record: bytes) -> None:
        appender = self._appender
        assert appender is not None
        rotate = appender.size > 0 and appender.size + len(record) > self._segment_bytes
        try:
            _write(appender, record, rotate)
        finally:
            self._sizes[appender.seq] = appender.size
            self._active = appender.seq
        self.backlog += 1
        self.writes += 1
        if self._on_durable is not None:
            self._on_durable()

    async def _flush(self) -> None:
        assert self._appender is not None
        appender, loop = self._appender, asyncio.get_running_loop()
        waiters: list[asyncio.Future[None]] = []
        try:
            while self._pending:
                data, waiters = b"".join(self._pending), self._waiters
                self._pending, self._waiters = [], []
                rotate = appender.size > 0 and appender.size + len(data) > self._segment_bytes
                try:
                    await loop.run_in_executor(self._io, _write, appender, data, rotate)
                except OSError as error:
                    for waiter in waiters:
                        if not waiter.done():
                            waiter.set_exception(OSError(error.errno, error.strerror))
                    continue
                finally:
                    self._sizes[appender.seq] = appender.size  # (a new segment when rotated)
                    self._active = appender.seq
                for waiter in waiters:
                    if not waiter.done():  # the caller may have been cancelled meanwhile
                        waiter.set_result(None)
                self.backlog += len(waiters)
                self.writes += 1
                waiters = []
                if self._on_durable is not None:
                    self._on_durable()
        except BaseException:
            # Cancelled (the loop is going away): no waiting record is known to be on disk.
            for waiter in [*waiters, *self._waiters]:
                waiter.cancel()
            self._pending, self._waiters = [], []
            raise
        finally:
            self._flusher = None

    async def take(self, max_lines: int) -> Batch | None:
        """The durable records after the cursor, at most `max_lines`, from one segment."""
        await self._advance()
        seq, offset = self._cursor
        end = self._sizes.get(seq, 0)
        if offset >= end:
            return None
        loop = asyncio.get_running_loop()
        path = self._path(seq)
        return await loop.run_in_executor(self._reader, _read, path, seq, offset, end, max_lines)

    async def commit(self, batch: Batch) -> None:
        if (batch.segment, batch.start) != self._cursor:
            raise ValueError("commit out of order: a batch must be committed as taken")
        self._cursor = (batch.segment, batch.end)
        self.backlog -= len(batch.lines)
        await self._advance()

    def position(self) -> tuple[int, int]:
        """Where the durable records end now; everything before it is committed once the
        cursor (`committed()`) reaches it."""
        if not self._sizes:
            return self._cursor
        last = max(self._sizes)
        return (last, self._sizes[last])

    def committed(self) -> tuple[int, int]:
        return self._cursor

    def backlog_bytes(self) -> int:
        seq, offset = self._cursor
        done = offset if seq in self._sizes else 0  # its segment may be deleted already
        return sum(size for s, size in self._sizes.items() if s >= seq) - done

    def segments(self) -> int:
        return len(self._sizes)

    async def seal(self) -> None:
        """Take no more records; wait for the ones in flight. The consumer can then drain
        every segment, and a drained spool leaves no files behind."""
        self._sealed = True
        if self._flusher is not None:
            await asyncio.shield(self._flusher)
        if self._appender is not None:
            await asyncio.get_running_loop().run_in_executor(self._io, self._appender.close)
        self._active = -1

    async def aclose(self) -> None:
        await self.seal()
        await self._advance()  # deletes the last segment too if it was drained
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = -1
        self._io.shutdown(wait=False)
        self._reader.shutdown(wait=False)

    async def _advance(self) -> None:
        """Move the cursor over finished sealed segments, deleting them."""
        loop = asyncio.get_running_loop()
        while True:
            seq, offset = self._cursor
            if seq not in self._sizes:  # deleted, or not yet created: the next live one
                later = [s for s in self._sizes if s > seq]
                if not later:
                    return
                self._cursor = (min(later), 0)
                continue
            if seq == self._active or offset < self._sizes[seq]:
                return
            await loop.run_in_executor(self._reader, _unlink, self._path(seq))
            del self._sizes[seq]

    def _path(self, seq: int) -> Path:
        return self.directory / f"{seq:012d}{SUFFIX}"


# --- blocking helpers, run on the spool's threads ------------------------------------------------


def _write(appender: _Appender, data: bytes, rotate: bool) -> None:
    if rotate:
        appender.rotate()
    appender.append(data)


def _lock_and_scan(directory: Path) -> tuple[int, dict[int, int], int]:
    directory.mkdir(parents=True, exist_ok=True)
    lock_fd = os.open(directory / "LOCK", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as error:
        os.close(lock_fd)
        raise SpoolBusy(f"spool {directory} is in use by another process") from error
    sizes: dict[int, int] = {}
    lines = 0
    for path in sorted(directory.glob(f"*{SUFFIX}")):
        if not path.stem.isdigit():
            continue
        size = 0
        with path.open("rb") as file:
            while chunk := file.read(1 << 20):
                size += len(chunk)
                lines += chunk.count(b"\n")
        sizes[int(path.stem)] = size
    return lock_fd, sizes, lines


def _read(path: Path, seq: int, offset: int, end: int, max_lines: int) -> Batch:
    with path.open("rb") as file:
        file.seek(offset)
        data = file.read(min(end - offset, max(_READ_CHUNK, max_lines * 1024)))
        if b"\n" not in data and offset + len(data) < end:
            data += file.read(end - offset - len(data))  # one very long record
    lines = data.split(b"\n")[:-1][:max_lines]  # [:-1]: what follows the last newline
    if not lines:
        return Batch(seq, offset, end, [])  # only a torn tail is left: skip it
    return Batch(seq, offset, offset + sum(len(line) + 1 for line in lines), lines)


def _unlink(path: Path) -> None:
    path.unlink(missing_ok=True)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
