"""The usage table in a SQLite file, driven from one dedicated thread.

sqlite3 calls block, so every one of them runs on this store's own thread (never the event
loop, never the shared default executor). The connection is created on that thread and used
only there. WAL lets `gateway usage` read the file while the gateway writes; synchronous=FULL
because a committed batch is deleted from the spool, so the commit itself must be durable.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from gateway.metering.stores import StoreError, drop_empty
from gateway.metering.stores.schema import (
    ADDED_COLUMNS,
    SQLITE,
    Row,
    create_statements,
    event_dict,
    index_statements,
    insert_sql,
    name_tags,
    query_sql,
    rows_sql,
)

T = TypeVar("T")


class SqliteStore:
    def __init__(self, path: Path, table: str) -> None:
        self._path = path
        self._table = table
        self._insert = insert_sql(table, SQLITE)
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger-sqlite")
        self._conn: sqlite3.Connection | None = None  # touched only on self._thread

    async def insert(self, rows: Sequence[Row]) -> None:
        await self._run(self._insert_sync, rows)

    async def query(
        self, since: float | None, until: float | None, group_by: Sequence[str]
    ) -> list[dict[str, Any]]:
        sql, args = query_sql(self._table, SQLITE, since, until, group_by)
        return drop_empty(name_tags(await self._run(self._fetch_dicts, sql, args), group_by))

    async def rows(
        self, since: float | None, until: float | None, limit: int
    ) -> list[dict[str, Any]]:
        sql, args = rows_sql(self._table, SQLITE, since, until, limit)
        return [event_dict(row) for row in await self._run(self._fetch, sql, args)]

    async def aclose(self) -> None:
        try:
            await self._run(self._close_sync)
        finally:
            self._thread.shutdown(wait=False)

    async def _run(self, call: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._thread, call, *args)
        except sqlite3.Error as error:
            raise StoreError(f"SQLite ledger {self._path}: {error}") from error

    # --- on self._thread ---------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = sqlite3.connect(self._path, timeout=5.0)
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=FULL")
                with conn:
                    for statement in create_statements(self._table):
                        conn.execute(statement)
                    bare = self._table.rpartition(".")[2]
                    present = {row[1] for row in conn.execute(f"PRAGMA table_info({bare})")}
                    for column, ddl in ADDED_COLUMNS:
                        if column not in present:
                            conn.execute(f"ALTER TABLE {self._table} ADD COLUMN {column} {ddl}")
                    for statement in index_statements(self._table):
                        conn.execute(statement)
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def _insert_sync(self, rows: Sequence[Row]) -> None:
        conn = self._connection()
        with conn:  # one transaction: commits, or rolls back on error
            conn.executemany(self._insert, rows)

    def _fetch(self, sql: str, args: list[Any]) -> list[tuple[Any, ...]]:
        return self._connection().execute(sql, args).fetchall()

    def _fetch_dicts(self, sql: str, args: list[Any]) -> list[dict[str, Any]]:
        cursor = self._connection().execute(sql, args)
        names = [column[0] for column in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def _close_sync(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
