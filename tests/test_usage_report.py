"""Usage rows rendered for `gateway usage` and `GET /admin/usage?format=csv`."""

from __future__ import annotations

import csv
import io

from gateway.metering.report import to_csv, to_table

COLUMNS = ("principal", "day", "requests", "cost_usd", "avg_latency_ms")
TOTALS: list[dict[str, object]] = [
    dict(zip(COLUMNS, ("alice", "2023-11-14", 2, 0.5, 10.0), strict=True)),
    dict(zip(COLUMNS, ("bob, jr", "2023-11-15", 12, 1.25, None), strict=True)),
]
RAW = [{"request_id": "r1", "time": 1_700_000_000.5, "groups": ("a", "b"), "estimated": True}]


def test_csv_keeps_values_exact_and_quotes_what_needs_it() -> None:
    text = to_csv(TOTALS)
    assert text.splitlines()[0] == "principal,day,requests,cost_usd,avg_latency_ms"
    assert list(csv.reader(io.StringIO(text)))[1:] == [
        ["alice", "2023-11-14", "2", "0.5", "10.0"],
        ["bob, jr", "2023-11-15", "12", "1.25", ""],
    ]
    assert to_csv(RAW).splitlines()[1] == "r1,1700000000.5,a;b,true"
    assert to_csv([], columns=["principal", "requests"]) == "principal,requests\r\n"


def test_table_aligns_columns_and_rounds_for_people() -> None:
    assert to_table(TOTALS).splitlines() == [
        "principal  day         requests  cost_usd  avg_latency_ms",
        "---------  ----------  --------  --------  --------------",
        "alice      2023-11-14         2  0.500000            10.0",
        "bob, jr    2023-11-15        12  1.250000",
    ]
    assert to_table(RAW).splitlines()[2] == "r1          2023-11-14 22:13:20  a,b     yes"
    assert to_table([]) == "(no usage)\n"


def test_csv_cells_cannot_start_a_spreadsheet_formula() -> None:
    # A JWT subject is whatever the identity provider says: it must reach a spreadsheet as text.
    rows = [
        {"principal": '=HYPERLINK("http://x")', "endpoint": "+1", "route": "@sum", "n": -1},
        {"principal": "-2+3", "endpoint": "\tx", "route": "a\rb", "n": -1.5},
    ]
    parsed = list(csv.reader(io.StringIO(to_csv(rows))))[1:]
    assert parsed == [
        ['\'=HYPERLINK("http://x")', "'+1", "'@sum", "-1"],
        ["'-2+3", "\ufffdx", "a\ufffdb", "-1.5"],  # numbers stay numbers
    ]
