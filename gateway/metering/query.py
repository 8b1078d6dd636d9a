"""Reading the ledger: the parameters `GET /admin/usage` and `gateway usage` share."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import cast, get_args

from gateway.config.schema import UsageConfig
from gateway.errors import BadRequest
from gateway.metering.stores import Store, open_store, sqlite_path
from gateway.metering.stores.schema import GroupBy

GROUP_BY_CHOICES: tuple[str, ...] = get_args(GroupBy)


@dataclass(frozen=True, slots=True)
class UsageQuery:
    since: float | None
    until: float | None
    group_by: tuple[GroupBy, ...]
    format: str  # json | csv | table

    @classmethod
    def parse(
        cls, since: str | None, until: str | None, group_by: str | None, format: str | None
    ) -> UsageQuery:
        names = tuple(name.strip() for name in (group_by or "").split(",") if name.strip())
        unknown = [name for name in names if name not in GROUP_BY_CHOICES]
        if unknown:
            raise BadRequest(
                f"Unknown group_by {', '.join(unknown)}: choose from {', '.join(GROUP_BY_CHOICES)}."
            )
        chosen = (format or "json").lower()
        if chosen not in ("json", "csv", "table"):
            raise BadRequest("'format' must be json, csv or table.")
        return cls(
            parse_time(since, "since"),
            parse_time(until, "until"),
            cast(tuple[GroupBy, ...], names),
            chosen,
        )


def parse_time(value: str | None, name: str) -> float | None:
    """Epoch seconds, an ISO date (`2026-11-25`: midnight UTC) or ISO date-time (naive: UTC)."""
    if value is None or value == "":
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError as exc:
        raise BadRequest(f"'{name}' must be epoch seconds or an ISO date/date-time.") from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.timestamp()


def read_store(config: UsageConfig, base_dir: Path) -> Store:
    """The ledger's database, for reading only (a running gateway owns the spool)."""
    url = config.ledger
    path = sqlite_path(url)
    if path is not None and not path.is_absolute():
        url = f"sqlite:///{base_dir / path}"
    return open_store(url)
