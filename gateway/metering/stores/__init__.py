"""Where the ledger keeps usage rows: SQLite or Postgres, behind one small interface.

A store is opened lazily and re-opened after a failure, so a database that is down when the
gateway starts (or goes down later) only delays writes; every failure surfaces as `StoreError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from gateway.metering.stores.schema import DEFAULT_TABLE, Row, check_table

SQLITE_PREFIX = "sqlite:///"
POSTGRES_PREFIXES = ("postgresql://", "postgres://")


class StoreError(Exception):
    """The database could not be reached or failed a statement. The ledger retries."""


class Store(Protocol):
    async def insert(self, rows: Sequence[Row]) -> None:
        """Insert in one transaction; a row whose request_id is already stored is skipped."""

    async def query(
        self, since: float | None, until: float | None, group_by: Sequence[str]
    ) -> list[dict[str, Any]]: ...

    async def rows(
        self, since: float | None, until: float | None, limit: int
    ) -> list[dict[str, Any]]: ...

    async def aclose(self) -> None: ...


def sqlite_path(url: str) -> Path | None:
    """The file of a `sqlite:///path` URL (`sqlite:////abs/path` for an absolute one)."""
    if not url.startswith(SQLITE_PREFIX):
        return None
    path = url[len(SQLITE_PREFIX) :]
    if not path or path.startswith(":memory:"):
        raise ValueError("the usage ledger needs a SQLite file, not an in-memory database")
    return Path(path)


def open_store(url: str, *, table: str = DEFAULT_TABLE) -> Store:
    """The store for `url`; nothing is connected until it is first used."""
    check_table(table)
    path = sqlite_path(url)
    if path is not None:
        from gateway.metering.stores.sqlite import SqliteStore

        return SqliteStore(path, table)
    if url.startswith(POSTGRES_PREFIXES):
        from gateway.metering.stores.postgres import PostgresStore

        return PostgresStore(url, table)
    raise ValueError(
        f"unsupported usage ledger URL {url.split('://')[0]!r}://…:"
        " use sqlite:///path or postgresql://user@host/db"
    )


def drop_empty(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Ungrouped totals are one row even when nothing matched; report no rows instead."""
    return [row for row in results if row["requests"]]
