"""The usage table in Postgres, through a small asyncpg pool (one writer, one reader)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import asyncpg

from gateway.metering.stores import StoreError, drop_empty
from gateway.metering.stores.schema import (
    ADDED_COLUMNS,
    POSTGRES,
    Row,
    create_statements,
    event_dict,
    index_statements,
    insert_sql,
    name_tags,
    query_sql,
    rows_sql,
)

# What a down, restarting or unreachable server raises; anything else is a bug and propagates.
_UNAVAILABLE = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


class PostgresStore:
    def __init__(self, dsn: str, table: str, *, connect_timeout_s: float = 5.0) -> None:
        self._dsn = dsn
        self._table = table
        self._insert = insert_sql(table, POSTGRES)
        self._connect_timeout_s = connect_timeout_s
        self._pool: asyncpg.Pool | None = None
        self._opening = asyncio.Lock()  # the writer and a reader may both find no pool yet

    async def insert(self, rows: Sequence[Row]) -> None:
        pool = await self._connected()
        try:
            async with pool.acquire() as conn, conn.transaction():
                await conn.executemany(self._insert, rows)
        except _UNAVAILABLE as error:
            raise StoreError(f"Postgres ledger: {type(error).__name__}: {error}") from error

    async def query(
        self, since: float | None, until: float | None, group_by: Sequence[str]
    ) -> list[dict[str, Any]]:
        sql, args = query_sql(self._table, POSTGRES, since, until, group_by)
        return drop_empty(name_tags([dict(r) for r in await self._fetch(sql, args)], group_by))

    async def rows(
        self, since: float | None, until: float | None, limit: int
    ) -> list[dict[str, Any]]:
        sql, args = rows_sql(self._table, POSTGRES, since, until, limit)
        return [event_dict(tuple(record)) for record in await self._fetch(sql, args)]

    async def aclose(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    async def _fetch(self, sql: str, args: list[Any]) -> list[asyncpg.Record]:
        pool = await self._connected()
        try:
            async with pool.acquire() as conn:
                records: list[asyncpg.Record] = await conn.fetch(sql, *args)
                return records
        except _UNAVAILABLE as error:
            raise StoreError(f"Postgres ledger: {type(error).__name__}: {error}") from error

    async def _connected(self) -> asyncpg.Pool:
        async with self._opening:
            if self._pool is None:
                self._pool = await self._open()
            return self._pool

    async def _open(self) -> asyncpg.Pool:
        pool: asyncpg.Pool | None = None
        try:
            pool = await asyncpg.create_pool(
                self._dsn, min_size=1, max_size=2, timeout=self._connect_timeout_s
            )
            async with pool.acquire() as conn, conn.transaction():
                # Two gateways starting together would race CREATE TABLE IF NOT EXISTS.
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", self._table)
                for statement in create_statements(self._table):
                    await conn.execute(statement)
                for column, ddl in ADDED_COLUMNS:
                    await conn.execute(
                        f"ALTER TABLE {self._table} ADD COLUMN IF NOT EXISTS {column} {ddl}"
                    )
                for statement in index_statements(self._table):
                    await conn.execute(statement)
        except _UNAVAILABLE as error:
            if pool is not None:
                pool.terminate()
            raise StoreError(f"Postgres ledger: {type(error).__name__}: {error}") from error
        return pool
