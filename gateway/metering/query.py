"""Reading the ledger: the parameters `GET /admin/usage` and `gateway usage` share."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

from gateway.config.schema import UsageConfig
from gateway.errors import BadRequest
from gateway.metering.stores import Store, open_store, sqlite_path
from gateway.metering.stores.schema import TAG_PREFIX, GroupBy
from gateway.metering.tags import KEY_RULE, TAG_KEY

GROUP_BY_CHOICES: tuple[str, ...] = get_args(GroupBy)


@dataclass(frozen=True, slots=True)
class UsageQuery:
    since: float | None
    until: float | None
    group_by: tuple[str, ...]  # GroupBy names and `tag:KEY`
    format: str  # json | csv | table

    @classmethod
    def parse(
        cls, since: str | None, until: str | None, group_by: str | None, format: str | None
    ) -> UsageQuery:
        names = tuple(name.strip() for name in (group_by or "").split(",") if name.strip())
        unknown = [name for name in names if name not in GROUP_BY_CHOICES and not _is_tag(name)]
        if unknown:
            raise BadRequest(
                f"Unknown group_by {', '.join(unknown)}: choose from"
                f" {', '.join(GROUP_BY_CHOICES)} or tag:KEY (KEY: {KEY_RULE})."
            )
        chosen = (format or "json").lower()
        if chosen not in ("json", "csv", "table"):
            raise BadRequest("'format' must be json, csv or table.")
        return cls(
            parse_time(since, "since"),
            parse_time(until, "until"),
            names,
            chosen,
        )


def _is_tag(name: str) -> bool:
    return name.startswith(TAG_PREFIX) and TAG_KEY.fullmatch(name[len(TAG_PREFIX) :]) is not None


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
