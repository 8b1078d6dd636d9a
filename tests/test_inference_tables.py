"""Inference tables: real requests through a real gateway, stopped with SIGTERM, read back as
Parquet with pandas and DuckDB (and the files searched byte by byte for keys). A row's response
is what the client received, byte for byte: a stream's events, an error's body, the Anthropic
shape on `/v1/messages`."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import httpx
import pandas as pd
import pytest

from tests.fakes.openai_upstream import FakeOpenAI
from tests.gateway_process import GatewayProcess, run_gateway, write_config
from tests.models import IRIS_ONE_ROW, TestModels

KEY = "gw-inference-tables-key-0123456789abcdef"
UPSTREAM_KEY = "sk-upstream-inference-tables-secret-42"
TAGS = {"x-gateway-tags": json.dumps({"team": "a"})}
LONG = "a long prompt " * 40  # over the `clipped` endpoint's 100 bytes


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


def chat_endpoint(name: str, upstream: FakeOpenAI, table: str = "", task: str = "chat") -> str:
    return f"""
  - name: {name}
    type: foundation
    task: {task}
    deployments: [{{api_base: "{upstream.base_url}", model: m, api_key: "{UPSTREAM_KEY}"}}]
    {table}"""


@dataclass(frozen=True)
class Calls:
    """The table after the calls, and what each call's client received, by x-request-id."""

    table: pd.DataFrame
    received: dict[str, httpx.Response]
    root: Path


def chat(model: str, content: str = "hello", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


def messages(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "max_tokens": 16, **chat(model), **extra}


@pytest.fixture(scope="module")
def calls(
    models: TestModels, upstream: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory
) -> Calls:
    """Real calls to every endpoint, then a SIGTERM (which must flush the table: the flush
    interval is an hour)."""
    workdir: Path = tmp_path_factory.mktemp("inference-tables")
    digest = hashlib.sha256(KEY.encode()).hexdigest()
    config = write_config(
        workdir,
        f"""
auth:
  keys:
    - {{id: team-a, sha256: "{digest}"}}
inference_table: {{path: tables, flush_interval_s: 3600}}
endpoints:
  - name: iris
    type: custom
    served_models: [{{model: "{models.classifier}"}}]
  - name: failing
    type: custom
    served_models: [{{model: "{models.failing}"}}]
{chat_endpoint("chat", upstream)}
{chat_endpoint("text", upstream, task="completions")}
{chat_endpoint("broken", upstream, "retries: 0")}
{chat_endpoint("quiet", upstream, "inference_table: {sample_rate: 0}")}
{chat_endpoint("clipped", upstream, "inference_table: {max_payload_bytes: 100}")}
""",
    )
    headers = {"authorization": f"Bearer {KEY}", "x-api-key": KEY, **TAGS}
    received: dict[str, httpx.Response] = {}
    with run_gateway(config, workdir=workdir) as gateway, httpx.Client(base_url=gateway.url) as c:

        def post(path: str, body: dict[str, Any], request_id: str, status: int = 200) -> None:
            sent = {**headers, "x-request-id": request_id}
            response = c.post(path, json=body, headers=sent, timeout=30)
            assert response.status_code == status, response.text
            received[request_id] = response

        post("/serving-endpoints/iris/invocations", IRIS_ONE_ROW, "iris-1")
        for name in ("chat", "quiet", "clipped"):
            post("/v1/chat/completions", chat(name, LONG if name == "clipped" else "hello"), name)
        post("/v1/chat/completions", chat("chat", stream=True), "chat-stream")
        post("/v1/completions", {"model": "text", "prompt": "hello", "stream": True}, "text-stream")
        post("/v1/messages", messages("chat"), "messages")
        post("/v1/messages", messages("chat", stream=True), "messages-stream")
        post("/v1/chat/completions", chat("clipped", LONG, stream=True), "clipped-stream")
        upstream.inject("status", status=500, message="upstream fell over")
        post("/v1/chat/completions", chat("broken"), "upstream-500", status=502)
        upstream.inject("break", after=2)
        post("/v1/chat/completions", chat("broken", stream=True), "broken-stream")
        upstream.inject("status", status=500, message="upstream fell over")
        post("/v1/messages", messages("broken", stream=True), "messages-500", status=502)
        failing = {"dataframe_split": {"columns": ["x"], "data": [[1.0]]}}
        post("/serving-endpoints/failing/invocations", failing, "model-raises", status=400)
        post("/serving-endpoints/iris/invocations", {"bad": 1}, "bad-input", status=400)
    root = workdir / "tables"
    files = sorted(root.rglob("*.parquet"))
    assert files, "SIGTERM did not flush the inference table"
    for path in root.rglob("*"):
        if path.is_file():
            assert not path.name.startswith("."), f"a temporary file was left: {path}"
            raw = path.read_bytes()
            assert KEY.encode() not in raw and UPSTREAM_KEY.encode() not in raw
            assert b"Bearer" not in raw
    return Calls(pd.read_parquet(root), received, root)


@pytest.fixture(scope="module")
def table(calls: Calls) -> pd.DataFrame:
    return calls.table


def row(table: pd.DataFrame, request_id: str) -> pd.Series:
    rows = table[table["client_request_id"] == request_id]
    assert len(rows) == 1, rows
    return rows.iloc[0]


def test_partitions_are_endpoint_and_date(table: pd.DataFrame) -> None:
    assert sorted(set(table["endpoint"].astype(str))) == [
        "broken",
        "chat",
        "clipped",
        "failing",
        "iris",
        "text",
    ]
    assert set(table["date"].astype(str)) == {pd.Timestamp.now(tz="UTC").strftime("%Y-%m-%d")}


def test_a_custom_model_call_is_recorded_with_its_payloads(table: pd.DataFrame) -> None:
    iris = row(table, "iris-1")
    assert json.loads(iris["request"]) == IRIS_ONE_ROW
    assert "predictions" in json.loads(iris["response"])
    assert iris["client_request_id"] == "iris-1" and iris["endpoint"] == "iris"
    assert len(iris["request_id"]) == 24 and iris["request_id"] != "iris-1"
    assert iris["principal"] == "team-a" and iris["principal_kind"] == "key"
    assert iris["served"] and iris["latency_ms"] > 0
    assert dict(iris["tags"]) == {"team": "a"}
    assert not iris["request_truncated"] and not iris["response_truncated"]
    assert abs(iris["time"] - pd.Timestamp.now(tz="UTC")) < pd.Timedelta(minutes=5)


def test_every_response_is_stored_as_the_client_received_it(calls: Calls) -> None:
    for request_id, response in calls.received.items():
        if request_id == "quiet":
            continue
        stored = row(calls.table, request_id)
        # A stream that failed after its 200 was sent is recorded with its error's status.
        status = 502 if request_id == "broken-stream" else response.status_code
        assert stored["status"] == status, request_id
        if stored["response_truncated"]:
            assert response.text.startswith(stored["response"]), request_id
        else:
            assert stored["response"] == response.text, request_id


def test_an_error_after_admission_stores_its_body(calls: Calls) -> None:
    for request_id, status, key in (
        ("upstream-500", 502, "error"),  # the gateway's OpenAI error, not the upstream's
        ("model-raises", 400, "error_code"),  # MLflow's shape and status (as MLflow answers)
        ("bad-input", 400, "error_code"),
        ("messages-500", 502, "error"),  # Anthropic's, on /v1/messages
    ):
        stored = row(calls.table, request_id)
        assert stored["status"] == status
        assert key in json.loads(stored["response"]), stored["response"]
    assert json.loads(row(calls.table, "messages-500")["response"])["type"] == "error"
    assert json.loads(row(calls.table, "bad-input")["request"]) == {"bad": 1}


def test_a_stream_stores_its_events_as_sent(table: pd.DataFrame) -> None:
    for request_id in ("chat-stream", "text-stream"):
        stored = row(table, request_id)
        assert stored["status"] == 200 and not stored["response_truncated"]
        assert stored["response"].startswith("data: {")
        assert stored["response"].endswith("data: [DONE]\n\n")
    chunks = [
        json.loads(line.removeprefix("data: "))
        for line in row(table, "chat-stream")["response"].splitlines()
        if line.startswith("data: {")
    ]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


def test_a_stream_that_fails_midway_stores_its_error_event(table: pd.DataFrame) -> None:
    stored = row(table, "broken-stream")
    assert stored["status"] == 502  # the usage row's: the client's 200 was already sent
    last = stored["response"].rstrip("\n").rsplit("\n\n", 1)[-1]
    assert "error" in json.loads(last.removeprefix("data: "))


def test_messages_store_the_anthropic_response(table: pd.DataFrame) -> None:
    message = json.loads(row(table, "messages")["response"])
    assert message["type"] == "message" and message["content"][0]["type"] == "text"
    assert "choices" not in message
    stream = row(table, "messages-stream")["response"]
    assert stream.startswith("event: message_start\n")
    assert stream.endswith('event: message_stop\ndata: {"type":"message_stop"}\n\n')
    assert "chat.completion.chunk" not in stream


def test_an_llm_call_is_recorded_with_tokens(table: pd.DataFrame) -> None:
    stored = row(table, "chat")
    assert json.loads(stored["request"])["messages"][0]["content"] == "hello"
    assert json.loads(stored["response"])["choices"]
    assert stored["prompt_tokens"] > 0 and stored["completion_tokens"] > 0
    assert stored["served_endpoint"] == "chat" and stored["endpoint"] == "chat"


def test_sample_rate_zero_writes_nothing(table: pd.DataFrame) -> None:
    assert "quiet" not in set(table["endpoint"].astype(str))


def test_payloads_over_the_limit_are_truncated_and_flagged(calls: Calls) -> None:
    for request_id in ("clipped", "clipped-stream"):
        stored = row(calls.table, request_id)
        assert stored["request_truncated"] and stored["response_truncated"]
        assert len(stored["request"].encode()) == len(stored["response"].encode()) == 100
        assert stored["request"].startswith('{"model":"clipped"')
        assert calls.received[request_id].text.startswith(stored["response"])
    assert row(calls.table, "clipped-stream")["response"].startswith("data: {")


def test_duckdb_reads_the_table_as_pandas_does(calls: Calls) -> None:
    query = f"""
        SELECT endpoint, CAST(date AS VARCHAR), client_request_id, status, response
        FROM read_parquet('{calls.root}/**/*.parquet', hive_partitioning = 1)
        ORDER BY client_request_id"""
    with duckdb.connect() as db:
        rows = db.sql(query).fetchall()
        relation = db.read_parquet(str(calls.root / "**" / "*.parquet"), hive_partitioning=True)
        assert relation.count("*").fetchall() == [(len(rows),)]
    frame = calls.table.sort_values("client_request_id")
    expected = zip(
        frame["endpoint"].astype(str),
        frame["date"].astype(str),
        frame["client_request_id"],
        frame["status"],
        frame["response"],
        strict=True,
    )
    assert rows == list(expected)


# --- rotation ---------------------------------------------------------------------------------


def table_gateway(
    upstream: FakeOpenAI, workdir: Path, table: str
) -> Iterator[tuple[GatewayProcess, httpx.Client]]:
    config = write_config(
        workdir,
        f"""
inference_table: {{path: tables, {table}}}
endpoints:
{chat_endpoint("chat", upstream)}
""",
    )
    with run_gateway(config, workdir=workdir) as gateway, httpx.Client(base_url=gateway.url) as c:
        yield gateway, c


def files_in(root: Path) -> list[Path]:
    return sorted(root.rglob("*.parquet"))


def wait_for_files(root: Path, count: int, timeout: float = 15) -> None:
    """Until `root` holds `count` files (polled: the writer's thread writes them)."""
    deadline = time.monotonic() + timeout
    while len(files_in(root)) < count:
        assert time.monotonic() < deadline, f"{len(files_in(root))} files, not {count}"
        time.sleep(0.05)


def read_both(root: Path) -> tuple[list[str], list[str]]:
    """The client request ids in the table, as pandas and as DuckDB read it."""
    with duckdb.connect() as db:
        found = db.sql(
            f"SELECT client_request_id FROM read_parquet('{root}/**/*.parquet',"
            " hive_partitioning = 1) ORDER BY client_request_id"
        ).fetchall()
    return sorted(pd.read_parquet(root)["client_request_id"]), [r[0] for r in found]


def test_files_rotate_by_size(upstream: FakeOpenAI, tmp_path: Path) -> None:
    """With files of at most 1 KiB, every call of ~1 KiB fills one: several files are written
    while the gateway runs, and the readers see every row once."""
    root = tmp_path / "tables"
    ids = [f"size-{i}" for i in range(6)]
    for _gateway, client in table_gateway(upstream, tmp_path, "max_file_bytes: 1024"):
        for request_id in ids:
            answer = client.post(
                "/v1/chat/completions",
                json=chat("chat", "x" * 800),
                headers={"x-request-id": request_id},
                timeout=30,
            )
            assert answer.status_code == 200, answer.text
        wait_for_files(root, len(ids) - 1)  # before any SIGTERM
    assert len(files_in(root)) >= 3
    assert read_both(root) == (ids, ids)


def test_files_are_written_every_flush_interval(upstream: FakeOpenAI, tmp_path: Path) -> None:
    """A call's row is in a file within the flush interval, while the gateway runs on."""
    root = tmp_path / "tables"
    for _gateway, client in table_gateway(upstream, tmp_path, "flush_interval_s: 0.2"):
        for count, request_id in enumerate(("time-0", "time-1"), start=1):
            answer = client.post(
                "/v1/chat/completions",
                json=chat("chat"),
                headers={"x-request-id": request_id},
                timeout=30,
            )
            assert answer.status_code == 200, answer.text
            wait_for_files(root, count)
            assert len(files_in(root)) == count
            expected = [f"time-{i}" for i in range(count)]
            assert read_both(root) == (expected, expected)
    assert read_both(root) == (["time-0", "time-1"], ["time-0", "time-1"])
