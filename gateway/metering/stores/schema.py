"""The usage table, the same in SQLite and Postgres, and the SQL both stores run against it.

Values are always bound as parameters; the only text interpolated into SQL is the table name
(checked against `TABLE_NAME` when a store is built), the grouping columns (checked against
`GROUP_BY`) and the fixed expressions below. A request tag to group by (`tag:team`) is checked
too, and still reaches the SQL only as a bound value (the JSON path or key).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, get_args

import orjson

from gateway.metering.tags import check_tag_key
from gateway.metering.usage import UsageEvent

GroupBy = Literal["principal", "endpoint", "day", "route", "status", "served"]
GROUP_BY: Final[tuple[str, ...]] = get_args(GroupBy)
TAG_PREFIX: Final = "tag:"  # `tag:team` groups by the request tag `team` ('' when untagged)
DEFAULT_TABLE: Final = "gateway_usage"
# `schema.table` is allowed so that tests can give every run a Postgres schema of its own.
TABLE_NAME: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}(\.[A-Za-z_][A-Za-z0-9_]{0,62})?$")

COLUMNS: Final = (
    "request_id", "time", "principal", "groups", "endpoint", "served", "route", "status",
    "latency_ms", "overhead_ms", "prompt_tokens", "completion_tokens", "estimated", "rows",
    "cost_usd", "fallback_used", "client_request_id", "principal_kind", "served_endpoint",
    "served_run_id", "model_uuid", "tags",
)  # fmt: skip

# Columns added after the first release: tables made before get them on open (name, DDL).
ADDED_COLUMNS: Final = (
    ("client_request_id", "TEXT NOT NULL DEFAULT ''"),
    ("principal_kind", "TEXT NOT NULL DEFAULT 'key'"),
    ("served_endpoint", "TEXT NOT NULL DEFAULT ''"),
    ("served_run_id", "TEXT NOT NULL DEFAULT ''"),
    ("model_uuid", "TEXT NOT NULL DEFAULT ''"),
    ("tags", "TEXT NOT NULL DEFAULT '{}'"),
)

# One row as bound to the INSERT, in COLUMNS order; `groups` is a JSON array (text), `tags`
# a JSON object of strings (text).
Row = tuple[
    str, float, str, str, str, str, str, int, float, float, int, int, bool, int, float, bool,
    str, str, str, str, str, str,
]  # fmt: skip


class CorruptRecord(ValueError):
    """A spooled line that is not an event (a torn write from a crash, or damage)."""


def encode(event: UsageEvent) -> bytes:
    """One spool line: the event as a JSON object, newline-terminated."""
    return orjson.dumps(event, option=orjson.OPT_APPEND_NEWLINE)


def decode(line: bytes) -> Row:
    try:
        obj = orjson.loads(line)
        groups = obj["groups"]
        if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
            raise CorruptRecord("'groups' is not a list of strings")
        tags = obj.get("tags", {})
        if not isinstance(tags, dict) or not all(isinstance(v, str) for v in tags.values()):
            raise CorruptRecord("'tags' is not an object of strings")
        return (
            _text(obj["request_id"]), float(obj["time"]), _text(obj["principal"]),
            orjson.dumps(groups).decode(), _text(obj["endpoint"]), _text(obj["served"]),
            _text(obj["route"]), int(obj["status"]), float(obj["latency_ms"]),
            float(obj["overhead_ms"]), int(obj.get("prompt_tokens", 0)),
            int(obj.get("completion_tokens", 0)), bool(obj.get("estimated", False)),
            int(obj.get("rows", 0)), float(obj.get("cost_usd", 0.0)),
            bool(obj.get("fallback_used", False)), _text(obj.get("client_request_id", "")),
            _text(obj.get("principal_kind", "key")), _text(obj.get("served_endpoint", "")),
            _text(obj.get("served_run_id", "")), _text(obj.get("model_uuid", "")),
            _text(orjson.dumps(tags).decode()),
        )  # fmt: skip
    except CorruptRecord:
        raise
    except (ValueError, TypeError, KeyError, AttributeError) as error:
        raise CorruptRecord(f"{type(error).__name__}: {error}") from error


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise CorruptRecord(f"expected a string, got {type(value).__name__}")
    # Postgres text cannot hold NUL, and a request path can (`%00`): one such row must not
    # block every row behind it, so both stores get the same replacement.
    return value.replace("\x00", "\ufffd") if "\x00" in value else value


def event_dict(row: Sequence[Any]) -> dict[str, Any]:
    """A stored row as `UsageEvent.as_dict()` shapes it (SQLite returns booleans as 0/1)."""
    out = dict(zip(COLUMNS, row, strict=True))
    out["groups"] = tuple(orjson.loads(out["groups"]))
    out["tags"] = orjson.loads(out["tags"])
    out["estimated"] = bool(out["estimated"])
    out["fallback_used"] = bool(out["fallback_used"])
    return out


@dataclass(frozen=True, slots=True)
class Dialect:
    name: Literal["sqlite", "postgres"]

    def param(self, index: int) -> str:
        """The placeholder for the index-th (1-based) bound value."""
        return "?" if self.name == "sqlite" else f"${index}"

    @property
    def day(self) -> str:
        """The UTC calendar day of `time`, as YYYY-MM-DD text."""
        if self.name == "sqlite":
            return "strftime('%Y-%m-%d', time, 'unixepoch')"
        return "to_char(to_timestamp(time) AT TIME ZONE 'UTC', 'YYYY-MM-DD')"

    def tag(self, index: int) -> str:
        """The value of the request tag whose JSON path (SQLite) or key (Postgres) is the
        index-th bound value; '' when the row has no such tag."""
        if self.name == "sqlite":
            return f"COALESCE(json_extract(tags, {self.param(index)}), '')"
        return f"COALESCE(tags::jsonb ->> {self.param(index)}::text, '')"

    def tag_arg(self, key: str) -> str:
        # The key's charset (tags.TAG_KEY) holds no quote, so the quoted path is exact.
        return f'$."{key}"' if self.name == "sqlite" else key


SQLITE: Final = Dialect("sqlite")
POSTGRES: Final = Dialect("postgres")


def check_table(table: str) -> str:
    if not TABLE_NAME.match(table):
        raise ValueError(f"invalid ledger table name {table!r}: want [schema.]identifier")
    return table


def create_statements(table: str) -> list[str]:
    bare = table.rpartition(".")[2]  # an index lives in its table's schema; it takes no prefix
    return [
        f"""CREATE TABLE IF NOT EXISTS {table} (
            request_id TEXT PRIMARY KEY,
            time DOUBLE PRECISION NOT NULL,
            principal TEXT NOT NULL,
            groups TEXT NOT NULL,
            endpoint TEXT NOT NULL,
            served TEXT NOT NULL,
            route TEXT NOT NULL,
            status INTEGER NOT NULL,
            latency_ms DOUBLE PRECISION NOT NULL,
            overhead_ms DOUBLE PRECISION NOT NULL,
            prompt_tokens BIGINT NOT NULL,
            completion_tokens BIGINT NOT NULL,
            estimated BOOLEAN NOT NULL,
            rows BIGINT NOT NULL,
            cost_usd DOUBLE PRECISION NOT NULL,
            fallback_used BOOLEAN NOT NULL,
            client_request_id TEXT NOT NULL DEFAULT '',
            principal_kind TEXT NOT NULL DEFAULT 'key',
            served_endpoint TEXT NOT NULL DEFAULT '',
            served_run_id TEXT NOT NULL DEFAULT '',
            model_uuid TEXT NOT NULL DEFAULT '',
            tags TEXT NOT NULL DEFAULT '{{}}'
        )""",
        f"CREATE INDEX IF NOT EXISTS {bare}_time ON {table} (time)",
        f"CREATE INDEX IF NOT EXISTS {bare}_principal_time ON {table} (principal, time)",
    ]


def index_statements(table: str) -> list[str]:
    """Indexes on columns that tables made by an older release get only on open."""
    bare = table.rpartition(".")[2]
    return [f"CREATE INDEX IF NOT EXISTS {bare}_client_request_id ON {table} (client_request_id)"]


def insert_sql(table: str, dialect: Dialect) -> str:
    values = ", ".join(dialect.param(i) for i in range(1, len(COLUMNS) + 1))
    return (
        f"INSERT INTO {table} ({', '.join(COLUMNS)}) VALUES ({values})"
        " ON CONFLICT (request_id) DO NOTHING"
    )


def _where(
    dialect: Dialect, since: float | None, until: float | None, args: list[Any] | None = None
) -> tuple[str, list[Any]]:
    """The time window, its values appended to `args` (the values bound before it)."""
    clauses: list[str] = []
    args = [] if args is None else args
    if since is not None:
        args.append(float(since))
        clauses.append(f"time >= {dialect.param(len(args))}")
    if until is not None:
        args.append(float(until))
        clauses.append(f"time < {dialect.param(len(args))}")
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), args


def tag_column(index: int) -> str:
    """The result column of the index-th tag grouped by (renamed `tag:KEY` by `name_tags`)."""
    return f"tag_{index}"


def name_tags(results: list[dict[str, Any]], group_by: Sequence[str]) -> list[dict[str, Any]]:
    """Results of `query_sql` with their tag columns named as grouped by (`tag:team`)."""
    tags = [key for key in dict.fromkeys(group_by) if key.startswith(TAG_PREFIX)]
    if not tags:
        return results
    names = {tag_column(i): key for i, key in enumerate(tags)}
    return [{names.get(column, column): value for column, value in row.items()} for row in results]


def query_sql(
    table: str,
    dialect: Dialect,
    since: float | None,
    until: float | None,
    group_by: Sequence[str],
) -> tuple[str, list[Any]]:
    """Totals per group over [since, until). Without `group_by` this is one row, whose
    `requests` is 0 when nothing matched: callers drop it (see `stores.aggregate`).

    A `tag:KEY` group is selected as `tag_N` (N counting tags only): see `name_tags`."""
    keys = list(dict.fromkeys(group_by))  # keep the caller's order, drop repeats
    unknown = [key for key in keys if key not in GROUP_BY and not key.startswith(TAG_PREFIX)]
    if unknown:
        raise ValueError(
            f"cannot group usage by {unknown}; choose from {list(GROUP_BY)} or tag:KEY"
        )
    # A JWT subject and a key may share an id: a principal is its kind and its id.
    columns = [
        column
        for key in keys
        for column in ((key, "principal_kind") if key == "principal" else (key,))
    ]
    args: list[Any] = []
    selected = []
    for column in columns:
        if column == "day":
            selected.append(f"{dialect.day} AS day")
        elif column.startswith(TAG_PREFIX):
            args.append(dialect.tag_arg(check_tag_key(column[len(TAG_PREFIX) :])))
            selected.append(f"{dialect.tag(len(args))} AS {tag_column(len(args) - 1)}")
        else:
            selected.append(column)
    where, args = _where(dialect, since, until, args)
    # CAST keeps integer sums integers: Postgres widens SUM(bigint) to numeric.
    sql = (
        "SELECT "
        + ", ".join(
            [
                *selected,
                "COUNT(*) AS requests",
                "CAST(SUM(CASE WHEN status >= 400 THEN 1 ELSE 0 END) AS BIGINT) AS errors",
                "CAST(SUM(prompt_tokens) AS BIGINT) AS prompt_tokens",
                "CAST(SUM(completion_tokens) AS BIGINT) AS completion_tokens",
                "SUM(cost_usd) AS cost_usd",
                "AVG(latency_ms) AS avg_latency_ms",
            ]
        )
        + f" FROM {table}{where}"
    )
    if columns:
        positions = ", ".join(str(i) for i in range(1, len(columns) + 1))
        sql += f" GROUP BY {positions} ORDER BY {positions}"
    return sql, args


def rows_sql(
    table: str, dialect: Dialect, since: float | None, until: float | None, limit: int
) -> tuple[str, list[Any]]:
    if limit < 0:
        raise ValueError("limit must not be negative")
    where, args = _where(dialect, since, until)
    args.append(int(limit))
    return (
        f"SELECT {', '.join(COLUMNS)} FROM {table}{where}"
        f" ORDER BY time, request_id LIMIT {dialect.param(len(args))}"
    ), args
