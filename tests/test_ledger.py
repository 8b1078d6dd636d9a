"""The usage ledger, each test run against SQLite and against a real Postgres.

Postgres: GATEWAY_TEST_POSTGRES (default postgresql://postgres@127.0.0.1:5432/test); each test
gets a schema of its own, dropped afterwards. When the default server is not running the
Postgres half is skipped; when GATEWAY_TEST_POSTGRES is set it must be reachable.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest

from gateway.config.schema import UsageConfig
from gateway.metering.ledger import Ledger, UsageNotRecorded
from gateway.metering.spool import SUFFIX, SpoolBusy
from gateway.metering.stores.schema import encode
from gateway.metering.usage import UsageEvent
from tests.gateway_process import free_port

pytestmark = pytest.mark.anyio
REPO = Path(__file__).resolve().parent.parent
PG_URL = os.environ.get("GATEWAY_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
DAY = 86_400.0
T0 = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class Backend:
    """A database for one test: `url` is up; `outage_url` is down until `restore()`."""

    url: str
    table: str
    outage_url: str
    restore: Callable[[], Awaitable[None]]


@pytest.fixture(params=["sqlite", "postgres"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "sqlite":
        later = tmp_path / "later"

        async def mkdir() -> None:
            later.mkdir()

        yield Backend(
            f"sqlite:///{tmp_path}/usage.db", "gateway_usage", f"sqlite:///{later}/u.db", mkdir
        )
        return
    schema = f"ledger_test_{uuid.uuid4().hex[:12]}"
    try:
        admin = await asyncpg.connect(PG_URL, timeout=3)
    except OSError as error:
        if "GATEWAY_TEST_POSTGRES" in os.environ:
            raise
        pytest.skip(f"no Postgres at {PG_URL}: {error}")
    real = urlsplit(PG_URL)
    port = free_port()  # nothing listens here until restore() starts a proxy to the real server
    outage = real._replace(netloc=real.netloc.replace(f":{real.port}", "") + f":{port}")
    proxies: list[asyncio.Server] = []

    async def proxy() -> None:
        upstream = (real.hostname or "127.0.0.1", real.port or 5432)
        proxies.append(await _start_proxy(port, upstream))

    try:
        await admin.execute(f"CREATE SCHEMA {schema}")
        yield Backend(PG_URL, f"{schema}.gateway_usage", outage.geturl(), proxy)
    finally:
        for server in proxies:
            server.close()
            await server.wait_closed()
        await admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        await admin.close()


async def _start_proxy(port: int, upstream: tuple[str, int]) -> asyncio.Server:
    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*upstream)
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    return await asyncio.start_server(handle, "127.0.0.1", port)


def event(n: int, **changes: object) -> UsageEvent:
    base = UsageEvent(
        request_id=f"req-{n}",
        time=T0 + n,
        principal="alice",
        groups=("team-a", "admins"),
        endpoint="chat",
        served="chat/0",
        route="/v1/chat/completions",
        status=200,
        latency_ms=10.0,
        overhead_ms=0.5,
        prompt_tokens=100,
        completion_tokens=20,
        cost_usd=0.25,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def make(backend: Backend, spool: Path, *, url: str | None = None, **options: Any) -> Ledger:
    settings = {"batch_size": 100, "flush_interval_s": 0.02, "retry_min_s": 0.02, **options}
    settings.setdefault("retry_max_s", 0.5)
    return Ledger(url or backend.url, spool, table=backend.table, **settings)


def segments(spool: Path) -> list[Path]:
    return sorted(spool.glob(f"*{SUFFIX}"))


async def test_recorded_events_reach_the_database(backend: Backend, tmp_path: Path) -> None:
    events = [event(n, estimated=n % 2 == 0, fallback_used=n == 3, rows=n) for n in range(250)]
    events.append(event(250, route="/v1/a\x00b", groups=()))  # Postgres text cannot hold NUL
    async with make(backend, tmp_path / "spool") as ledger:
        await asyncio.gather(*(ledger.record(e) for e in events))
        assert ledger.stats().recorded == 251
        await asyncio.wait_for(ledger.flush(), 10)
        stored = await ledger.rows(limit=1000)
        stats = ledger.stats()
    assert stored[:250] == [e.as_dict() for e in events[:250]]
    assert stored[250]["route"] == "/v1/a\ufffdb" and stored[250]["groups"] == ()
    assert (stats.backlog_events, stats.backlog_bytes, stats.written) == (0, 0, 251)


async def test_start_replays_the_spool_and_ignores_duplicates(
    backend: Backend, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    async with make(backend, tmp_path / "other") as ledger:
        await ledger.record(event(1))  # already stored before the replay
    # What a killed process leaves: two segments, a record repeated, a torn last line;
    # and a damaged line, which is skipped (and counted) rather than blocking the rest.
    spool.mkdir()
    (spool / f"{7:012d}{SUFFIX}").write_bytes(encode(event(1)) + encode(event(2)))
    torn = encode(event(4))[:40]
    damaged = b"\x00\x00not an event\n"
    (spool / f"{9:012d}{SUFFIX}").write_bytes(encode(event(2)) + damaged + encode(event(3)) + torn)
    ledger = make(backend, spool, flush_interval_s=60)  # the writer will not run in this test
    await ledger.start()
    try:
        assert [row["request_id"] for row in await ledger.rows()] == ["req-1", "req-2", "req-3"]
        stats = ledger.stats()
        assert (stats.backlog_events, stats.corrupt_records, stats.written) == (0, 1, 4)
        assert [p.name for p in segments(spool)] == [f"{10:012d}{SUFFIX}"]  # replayed: deleted
    finally:
        await ledger.aclose()
    assert segments(spool) == []


async def test_a_spool_directory_has_one_owner(backend: Backend, tmp_path: Path) -> None:
    async with make(backend, tmp_path / "spool"):
        with pytest.raises(SpoolBusy):
            await make(backend, tmp_path / "spool").start()


async def test_aclose_drains_and_then_refuses(backend: Backend, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    ledger = make(backend, spool, batch_size=10_000, flush_interval_s=60)
    await ledger.start()
    for n in range(30):
        await ledger.record(event(n))
    assert ledger.stats().written == 0 and len(segments(spool)) == 1
    await ledger.aclose()
    assert ledger.stats().written == 30 and segments(spool) == []
    with pytest.raises(UsageNotRecorded):
        await ledger.record(event(99))
    async with make(backend, tmp_path / "reader") as reader:
        assert len(await reader.rows()) == 30


async def test_segments_rotate_and_drained_ones_are_deleted(
    backend: Backend, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    async with make(backend, spool, segment_bytes=2000, flush_interval_s=60) as ledger:
        for n in range(40):  # one at a time: each is its own write
            await ledger.record(event(n))
        assert len(segments(spool)) >= 5
        assert ledger.stats().backlog_events == 40
        await asyncio.wait_for(ledger.flush(), 10)
        assert len(segments(spool)) == 1  # only the one still appended to
        assert ledger.stats().backlog_bytes == 0
        assert len(await ledger.rows()) == 40


async def test_query_aggregates_in_sql(backend: Backend, tmp_path: Path) -> None:
    events = [
        event(1, principal="alice", endpoint="chat", latency_ms=10.0),
        event(2, principal="alice", endpoint="embed", prompt_tokens=7, completion_tokens=0),
        event(3, principal="bob", endpoint="chat", status=429, latency_ms=30.0),
        event(4, time=T0 + DAY, principal="bob", endpoint="chat", cost_usd=1.0),
        event(5, time=T0 + 2 * DAY, principal="carol", endpoint="chat", served="chat/1"),
    ]
    async with make(backend, tmp_path / "spool") as ledger:
        for e in events:
            await ledger.record(e)
        await asyncio.wait_for(ledger.flush(), 10)
        by_principal = await ledger.query(group_by=["principal"])
        assert by_principal[0] == {
            "principal": "alice",
            "principal_kind": "key",  # a JWT subject may share a key's id: never merged
            "requests": 2,
            "errors": 0,
            "prompt_tokens": 107,
            "completion_tokens": 20,
            "cost_usd": 0.5,
            "avg_latency_ms": 10.0,
        }
        assert [(r["principal"], r["requests"], r["errors"]) for r in by_principal] == [
            ("alice", 2, 0),
            ("bob", 2, 1),
            ("carol", 1, 0),
        ]
        bob = by_principal[1]
        assert (bob["avg_latency_ms"], bob["cost_usd"]) == (20.0, 1.25)
        by_day = await ledger.query(group_by=["day", "endpoint"])
        assert [(r["day"], r["endpoint"], r["requests"]) for r in by_day] == [
            ("2023-11-14", "chat", 2),
            ("2023-11-14", "embed", 1),
            ("2023-11-15", "chat", 1),
            ("2023-11-16", "chat", 1),
        ]
        window = await ledger.query(T0 + 2, T0 + DAY + 1, ["status", "served"])
        assert [(r["status"], r["served"], r["requests"]) for r in window] == [
            (200, "chat/0", 2),
            (429, "chat/0", 1),
        ]
        [total] = await ledger.query(since=T0 + DAY)
        assert (total["requests"], total["prompt_tokens"], total["cost_usd"]) == (2, 200, 1.25)
        assert await ledger.query(since=T0 + 10 * DAY) == []
        assert await ledger.query(since=T0 + 10 * DAY, group_by=["route"]) == []
        assert [r["request_id"] for r in await ledger.rows(T0 + 2, T0 + DAY + 1, 2)] == [
            "req-2",
            "req-3",
        ]
        with pytest.raises(ValueError, match="cannot group"):
            await ledger.query(group_by=["principal; DROP TABLE x"])  # type: ignore[list-item]


async def test_database_down_events_stay_spooled_for_the_next_start(
    backend: Backend, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    async with make(backend, spool, url=backend.outage_url, batch_size=5) as down:
        await asyncio.gather(*(down.record(event(n)) for n in range(20)))
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(down.flush(), 0.5)
        stats = down.stats()
        assert stats.write_failures >= 1 and stats.last_error
        assert (stats.recorded, stats.written, stats.backlog_events) == (20, 0, 20)
    assert segments(spool)  # aclose could not drain: the events wait on disk
    async with make(backend, spool) as up:  # a new ledger on the live database
        assert len(await up.rows()) == 20  # replayed by start(), before it returned
        assert up.stats().backlog_events == 0


async def test_database_down_is_retried_until_it_is_back(backend: Backend, tmp_path: Path) -> None:
    async with make(backend, tmp_path / "spool", url=backend.outage_url) as ledger:
        await asyncio.gather(*(ledger.record(event(n)) for n in range(50)))
        deadline = time.monotonic() + 10
        while ledger.stats().write_failures < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert ledger.stats().write_failures >= 2
        await backend.restore()
        await asyncio.wait_for(ledger.flush(), 10)
        assert len(await ledger.rows()) == 50
        assert ledger.stats().backlog_events == 0


async def test_open_resolves_relative_paths(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    config = UsageConfig(ledger="sqlite:///data/usage.db", spool_dir="spool")
    async with Ledger.open(config, tmp_path) as ledger:
        await ledger.record(event(1))
        await asyncio.wait_for(ledger.flush(), 10)
    assert (tmp_path / "data" / "usage.db").is_file() and (tmp_path / "spool").is_dir()
    config = UsageConfig(ledger=f"sqlite:///{tmp_path}/abs.db", spool_dir=str(tmp_path / "s"))
    async with Ledger.open(config, Path("/nonexistent")) as ledger:
        await ledger.record(event(1))
    assert (tmp_path / "abs.db").is_file() and (tmp_path / "s").is_dir()


async def test_acknowledged_events_survive_sigkill(backend: Backend, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    with (tmp_path / "child.err").open("wb") as errors:
        child = subprocess.Popen(
            [sys.executable, "-m", "tests.ledger_child", backend.url, backend.table, str(spool)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=errors,
        )
    assert child.stdout is not None
    stdout, output = child.stdout, list[bytes]()
    # Read while it runs: a full pipe would stall the child's event loop, not just its prints.
    reader = threading.Thread(target=lambda: output.append(stdout.read()))
    reader.start()
    try:
        deadline = time.monotonic() + 20
        while not segments(spool) and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(1.0)  # recording flat out, the writer inserting and deleting behind it
        assert child.poll() is None, (tmp_path / "child.err").read_text()[-2000:]
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        reader.join()
        stdout.close()
    assert child.returncode == -signal.SIGKILL
    lines = output[0].decode().split("\n")[:-1]  # a line cut off by the kill is not counted
    acknowledged = set(lines)
    assert len(acknowledged) == len(lines) > 200
    async with make(backend, spool) as ledger:
        stored = Counter(row["request_id"] for row in await ledger.rows(limit=10**7))
        assert ledger.stats().backlog_events == 0
    assert acknowledged <= set(stored), f"lost {len(acknowledged - set(stored))} acknowledged"
    assert max(stored.values()) == 1
    assert segments(spool) == []


OLD_TABLE = """CREATE TABLE {table} (
    request_id TEXT PRIMARY KEY, time DOUBLE PRECISION NOT NULL, principal TEXT NOT NULL,
    groups TEXT NOT NULL, endpoint TEXT NOT NULL, served TEXT NOT NULL, route TEXT NOT NULL,
    status INTEGER NOT NULL, latency_ms DOUBLE PRECISION NOT NULL,
    overhead_ms DOUBLE PRECISION NOT NULL, prompt_tokens BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL, estimated BOOLEAN NOT NULL, rows BIGINT NOT NULL,
    cost_usd DOUBLE PRECISION NOT NULL, fallback_used BOOLEAN NOT NULL
)"""  # the table as the first release made it


async def test_a_table_of_an_older_release_gets_the_new_columns(
    backend: Backend, tmp_path: Path
) -> None:
    if backend.url.startswith("sqlite"):
        with sqlite3.connect(backend.url.removeprefix("sqlite:///")) as conn:
            conn.execute(OLD_TABLE.format(table=backend.table))
            conn.execute(
                f"INSERT INTO {backend.table} VALUES"
                " ('old-1', 1.0, 'bob', '[]', 'e', 's', '/r', 200, 1, 1, 1, 1, 0, 0, 0, 0)"
            )
    else:
        conn = await asyncpg.connect(backend.url)
        try:
            await conn.execute(OLD_TABLE.format(table=backend.table))
        finally:
            await conn.close()
    new = event(
        1,
        client_request_id="client-7",
        principal_kind="jwt",
        served_endpoint="chat",
        served_run_id="run-1",
        model_uuid="uuid-1",
        tags={"team": "search"},
    )
    async with make(backend, tmp_path / "spool") as ledger:
        await ledger.record(new)
        await asyncio.wait_for(ledger.flush(), 10)
        stored = {row["request_id"]: row for row in await ledger.rows()}
    assert stored["req-1"] == new.as_dict()
    if "old-1" in stored:  # the old row reads with the new columns' defaults
        assert (stored["old-1"]["client_request_id"], stored["old-1"]["principal_kind"]) == (
            "",
            "key",
        )
        old = stored["old-1"]
        assert (old["served_run_id"], old["model_uuid"], old["tags"]) == ("", "", {})


async def test_usage_groups_by_a_request_tag(backend: Backend, tmp_path: Path) -> None:
    events = [
        event(1, tags={"team": "search", "cost.center": "42"}),
        event(2, tags={"team": "search"}, cost_usd=1.0),
        event(3, tags={"team": "ads", "cost.center": "42"}),
        event(4),  # untagged: its group is ''
        event(5, tags={"team": 'it\'s "quoted"', "a-b": "x"}),
    ]
    async with make(backend, tmp_path / "spool") as ledger:
        for e in events:
            await ledger.record(e)
        await asyncio.wait_for(ledger.flush(), 10)
        by_team = await ledger.query(group_by=["tag:team"])
        assert [(r["tag:team"], r["requests"], r["cost_usd"]) for r in by_team] == [
            ("", 1, 0.25),
            ("ads", 1, 0.25),
            ('it\'s "quoted"', 1, 0.25),
            ("search", 2, 1.25),
        ]
        # two tags (one with a dot in its key) and a column, bound in order with the window
        both = await ledger.query(T0 + 1, T0 + 4, ["tag:cost.center", "endpoint", "tag:team"])
        assert [(r["tag:cost.center"], r["endpoint"], r["tag:team"]) for r in both] == [
            ("", "chat", "search"),
            ("42", "chat", "ads"),
            ("42", "chat", "search"),
        ]
        assert [r["requests"] for r in await ledger.query(group_by=["tag:a-b"])] == [4, 1]
        stored = await ledger.rows()
        assert [row["tags"] for row in stored] == [e.tags for e in events]
        for key in ("tag:x') OR 1=1 --", "tag:", "tag:a b", "tag:team\n"):
            with pytest.raises(ValueError, match="invalid tag key"):
                await ledger.query(group_by=[key])
