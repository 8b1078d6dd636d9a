"""Usage rows (from `Ledger.query` or `Ledger.rows`) as CSV or as a fixed-width table.

Used by `gateway usage` and `GET /admin/usage?format=csv`. CSV keeps values exact (epoch
seconds, full floats) for machines; the table rounds them for people.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

Rows = Sequence[Mapping[str, Any]]
_FORMULA_STARTS = ("=", "+", "-", "@")  # tab and CR are control characters, replaced
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


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
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list | tuple):
        return _safe_text(";".join(str(item) for item in value))
    return _safe_text(str(value))


def _safe_text(text: str) -> str:
    """Text a spreadsheet shows as text: principals, endpoints and routes come from callers
    (a JWT subject can be `=HYPERLINK(...)`), so a cell that would start a formula is prefixed
    with `'` (OWASP's advice) and control characters are replaced."""
    if _CONTROL.search(text):
        text = _CONTROL.sub("\ufffd", text)
    if text.startswith(_FORMULA_STARTS):
        text = "'" + text
    return text


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
