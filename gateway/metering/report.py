"""Usage rows (from `Ledger.query` or `Ledger.rows`) as CSV or as a fixed-width table.

Used by `gateway usage` and `GET /admin/usage?format=csv`. CSV keeps values exact (epoch
seconds, full floats) for machines; the table rounds them for people.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

Rows = Sequence[Mapping[str, Any]]


def columns_of(rows: Rows) -> list[str]:
    """Every key, in the order first seen."""
    return list(dict.fromkeys(key for row in rows for key in row))


def to_csv(rows: Rows, columns: Sequence[str] | None = None) -> str:
    names = list(columns) if columns is not None else columns_of(rows)
    out = io.StringIO()
    writer = csv.writer(out)  # RFC 4180: quoted as needed, CRLF line ends
    writer.writerow(names)
    for row in rows:
        writer.writerow([_csv_cell(row.get(name)) for name in names])
    return out.getvalue()


def to_table(rows: Rows, columns: Sequence[str] | None = None) -> str:
    names = list(columns) if columns is not None else columns_of(rows)
    if not rows:
        return "(no usage)\n"
    cells = [[_table_cell(name, row.get(name)) for name in names] for row in rows]
    numeric = [name != "time" and all(_is_number(row.get(name)) for row in rows) for name in names]
    widths = [max(len(name), *(len(line[i]) for line in cells)) for i, name in enumerate(names)]

    def line(values: Sequence[str]) -> str:
        parts = [
            value.rjust(width) if right else value.ljust(width)
            for value, width, right in zip(values, widths, numeric, strict=True)
        ]
        return "  ".join(parts).rstrip()

    rule = ["-" * width for width in widths]
    return "\n".join([line(names), line(rule), *(line(values) for values in cells)]) + "\n"


def _is_number(value: Any) -> bool:
    return value is None or (isinstance(value, int | float) and not isinstance(value, bool))


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return ";".join(str(item) for item in value)
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _table_cell(name: str, value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ",".join(str(item) for item in value)
    if isinstance(value, float):
        if name == "time":
            return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M:%S")
        if name == "cost_usd":
            return f"{value:.6f}"
        if name.endswith("_ms"):
            return f"{value:.1f}"
        return f"{value:.6g}"
    return str(value)
