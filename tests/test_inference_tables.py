"""Inference tables: real requests through a real gateway, stopped with SIGTERM, read back as
Parquet with pandas (and the files searched byte by byte for keys)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest

from tests.fakes.openai_upstream import FakeOpenAI
from tests.gateway_process import run_gateway, write_config
from tests.models import IRIS_ONE_ROW, TestModels

KEY = "gw-inference-tables-key-0123456789abcdef"
UPSTREAM_KEY = "sk-upstream-inference-tables-secret-42"
TAGS = {"x-gateway-tags": json.dumps({"team": "a"})}
LONG = "a long prompt " * 40  # over the `clipped` endpoint's 100 bytes


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


def chat_endpoint(name: str, upstream: FakeOpenAI, table: str = "") -> str:
    return f"""
  - name: {name}
    type: foundation
    task: chat
    deployments: [{{api_base: "{upstream.base_url}", model: m, api_key: "{UPSTREAM_KEY}"}}]
    {table}"""


@pytest.fixture(scope="module")
def table(
    models: TestModels, upstream: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory
) -> pd.DataFrame:
    """The table after real calls to every endpoint and a SIGTERM (which must flush it: the
    flush interval is an hour)."""
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
{chat_endpoint("chat", upstream)}
{chat_endpoint("quiet", upstream, "inference_table: {sample_rate: 0}")}
{chat_endpoint("clipped", upstream, "inference_table: {max_payload_bytes: 100}")}
""",
    )
    headers = {"authorization": f"Bearer {KEY}", "x-api-key": KEY, **TAGS}
    with run_gateway(config, workdir=workdir) as gateway, httpx.Client(base_url=gateway.url) as c:

        def post(path: str, body: dict[str, Any], request_id: str) -> None:
            sent = {**headers, "x-request-id": request_id}
            response = c.post(path, json=body, headers=sent, timeout=30)
            assert response.status_code == 200, response.text

        post("/serving-endpoints/iris/invocations", IRIS_ONE_ROW, "iris-1")
        for name in ("chat", "quiet", "clipped"):
            content = LONG if name == "clipped" else "hello"
            message = {"model": name, "messages": [{"role": "user", "content": content}]}
            post("/v1/chat/completions", message, f"{name}-1")
        unknown = c.post("/serving-endpoints/iris/invocations", json={"bad": 1}, headers=headers)
        assert unknown.status_code == 400
    root = workdir / "tables"
    files = sorted(root.rglob("*.parquet"))
    assert files, "SIGTERM did not flush the inference table"
    for path in root.rglob("*"):
        if path.is_file():
            assert not path.name.startswith("."), f"a temporary file was left: {path}"
            raw = path.read_bytes()
            assert KEY.encode() not in raw and UPSTREAM_KEY.encode() not in raw
            assert b"Bearer" not in raw
    return pd.read_parquet(root)


def row(table: pd.DataFrame, endpoint: str, status: int = 200) -> pd.Series:
    rows = table[(table["endpoint"] == endpoint) & (table["status"] == status)]
    assert len(rows) == 1, rows
    return rows.iloc[0]


def test_partitions_are_endpoint_and_date(table: pd.DataFrame) -> None:
    assert sorted(set(table["endpoint"].astype(str))) == ["chat", "clipped", "iris"]
    assert set(table["date"].astype(str)) == {pd.Timestamp.now(tz="UTC").strftime("%Y-%m-%d")}


def test_a_custom_model_call_is_recorded_with_its_payloads(table: pd.DataFrame) -> None:
    iris = row(table, "iris")
    assert json.loads(iris["request"]) == IRIS_ONE_ROW
    assert "predictions" in json.loads(iris["response"])
    assert iris["client_request_id"] == "iris-1"
    assert len(iris["request_id"]) == 24 and iris["request_id"] != "iris-1"
    assert iris["principal"] == "team-a" and iris["principal_kind"] == "key"
    assert iris["served"] and iris["latency_ms"] > 0
    assert dict(iris["tags"]) == {"team": "a"}
    assert not iris["request_truncated"] and not iris["response_truncated"]
    assert abs(iris["time"] - pd.Timestamp.now(tz="UTC")) < pd.Timedelta(minutes=5)


def test_a_failed_call_is_recorded_with_its_status(table: pd.DataFrame) -> None:
    failed = row(table, "iris", 400)
    assert json.loads(failed["request"]) == {"bad": 1}
    assert failed["response"] == ""


def test_an_llm_call_is_recorded_with_tokens(table: pd.DataFrame) -> None:
    chat = row(table, "chat")
    assert json.loads(chat["request"])["messages"][0]["content"] == "hello"
    assert json.loads(chat["response"])["choices"]
    assert chat["prompt_tokens"] > 0 and chat["completion_tokens"] > 0
    assert chat["served_endpoint"] == "chat" and chat["client_request_id"] == "chat-1"


def test_sample_rate_zero_writes_nothing(table: pd.DataFrame) -> None:
    assert "quiet" not in set(table["endpoint"].astype(str))


def test_payloads_over_the_limit_are_truncated_and_flagged(table: pd.DataFrame) -> None:
    clipped = row(table, "clipped")
    assert clipped["request_truncated"] and clipped["response_truncated"]
    assert len(clipped["request"].encode()) == 100
    assert clipped["request"].startswith('{"model":"clipped"')
