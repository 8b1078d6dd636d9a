"""Which model version answered, and the request's tags: in `x-served-model`, the usage row,
`/ready`, `/admin/usage` and `gateway usage`, over a real registry and real models."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml

from gateway.metering.tags import MAX_TAGS
from tests.gateway_process import GatewayProcess, run_gateway, write_config
from tests.models import IRIS_ONE_ROW, TestModels


@pytest.fixture(scope="module")
def twin(models: TestModels) -> Any:
    """A registered model `twin` whose versions 1 and 2 are one source (iris v1's artifacts,
    run and all), alias `champion` on 1; returns the registry client."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=models.registry_uri, registry_uri=models.registry_uri)
    run_id = client.get_model_version("iris", "1").run_id
    artifacts = client.get_model_version_download_uri("iris", "1")  # one folder for both
    client.create_registered_model("twin")
    for _ in range(2):
        client.create_model_version("twin", artifacts, run_id=run_id)
    client.set_registered_model_alias("twin", "champion", "1")
    return client


@pytest.fixture(scope="module")
def echo_chat(models: TestModels, twin: Any) -> str:
    """A registered ChatModel `echo-chat`, version 1 (the local chat model, with iris v1's
    run), alias `live`; returns its run id."""
    run_id: str = twin.get_model_version("iris", "1").run_id
    twin.create_registered_model("echo-chat")
    twin.create_model_version("echo-chat", str(models.chat), run_id=run_id)
    twin.set_registered_model_alias("echo-chat", "live", "1")
    return run_id


@pytest.fixture(scope="module")
def gateway(
    models: TestModels, twin: Any, echo_chat: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    workdir = tmp_path_factory.mktemp("lineage")
    path = write_config(
        workdir,
        f"""
registry_uri: "{models.registry_uri}"
registry: {{poll_s: 0.3}}
usage: {{flush_interval_ms: 20}}
endpoints:
  - {{name: twin, type: custom, served_models: [{{model: "models:/twin@champion"}}]}}
  - {{name: local, type: custom, served_models: [{{model: "{models.classifier}"}}]}}
  - {{name: chat-registry, type: custom, served_models: [{{model: "models:/echo-chat@live"}}]}}
  - {{name: chat-local, type: custom, served_models: [{{model: "{models.chat}"}}]}}
""",
    )
    with run_gateway(path, workdir=workdir) as process:
        yield process


def invoke(gateway: GatewayProcess, endpoint: str, **headers: str) -> httpx.Response:
    return httpx.post(
        f"{gateway.url}/serving-endpoints/{endpoint}/invocations",
        json=IRIS_ONE_ROW,
        headers=headers,
        timeout=30,
    )


def recent(gateway: GatewayProcess, request_id: str) -> dict[str, Any]:
    events = httpx.get(f"{gateway.url}/admin/usage/recent?limit=1000").json()["data"]
    [event] = [e for e in events if e["request_id"] == request_id]
    return dict(event)


def test_moving_an_alias_between_versions_of_one_source_serves_the_new_version(
    gateway: GatewayProcess, twin: Any
) -> None:
    run_id = twin.get_model_version("twin", "1").run_id
    assert run_id and run_id == twin.get_model_version("twin", "2").run_id
    first = invoke(gateway, "twin")
    assert first.status_code == 200, first.text
    assert first.headers["x-served-model"] == "models:/twin/1"
    event = recent(gateway, first.headers["x-request-id"])
    assert (event["served"], event["served_run_id"]) == ("models:/twin/1", run_id)
    assert event["model_uuid"]
    twin.set_registered_model_alias("twin", "champion", "2")
    deadline = time.monotonic() + 60
    while True:
        answer = invoke(gateway, "twin")
        assert answer.status_code == 200, answer.text
        if answer.headers["x-served-model"] == "models:/twin/2":
            break
        assert answer.headers["x-served-model"] == "models:/twin/1"
        assert time.monotonic() < deadline, "the alias move was never served"
        time.sleep(0.1)
    event = recent(gateway, answer.headers["x-request-id"])
    assert (event["served"], event["served_run_id"]) == ("models:/twin/2", run_id)
    [described] = httpx.get(f"{gateway.url}/ready").json()["endpoints"]["twin"]
    assert described == {
        "model": "models:/twin/2",
        "version": "2",
        "run_id": run_id,
        "model_uuid": event["model_uuid"],
    }
    # and in the durable ledger, by version
    served = _usage_until(gateway, "served", lambda rows: {"models:/twin/2"} <= set(rows))
    assert served["models:/twin/1"] >= 1


def test_a_local_model_row_names_its_path_model_uuid_and_tags(
    gateway: GatewayProcess, models: TestModels
) -> None:
    model_uuid = yaml.safe_load((models.classifier / "MLmodel").read_text())["model_uuid"]
    tags = {"team": "search", "cost.center": "42"}
    answer = invoke(gateway, "local", **{"x-gateway-tags": orjson.dumps(tags).decode()})
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-served-model"] == str(models.classifier)
    event = recent(gateway, answer.headers["x-request-id"])
    assert (event["served"], event["model_uuid"], event["tags"]) == (
        str(models.classifier),
        model_uuid,
        tags,
    )
    databricks = {"Databricks-Ai-Gateway-Request-Tags": '{"team": "ads"}'}
    assert invoke(gateway, "local", **databricks).status_code == 200
    [described] = httpx.get(f"{gateway.url}/ready").json()["endpoints"]["local"]
    assert described["model_uuid"] == model_uuid and "version" not in described
    by_team = _usage_until(gateway, "tag:team", lambda rows: rows.get("ads") == 1)
    assert by_team["search"] == 1
    command = ["usage", "--config", str(_config(gateway)), "--group-by", "tag:team,endpoint"]
    table = subprocess.run(
        [sys.executable, "-m", "gateway", *command, "--format", "json"],
        capture_output=True,
        check=True,
        timeout=60,
    )
    rows = orjson.loads(table.stdout)
    assert {(r["tag:team"], r["endpoint"]) for r in rows} >= {("search", "local"), ("ads", "local")}


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("route", ["/v1/chat/completions", "/v1/messages"])
def test_a_chat_model_on_llm_routes_names_its_version(
    gateway: GatewayProcess, models: TestModels, echo_chat: str, route: str, stream: bool
) -> None:
    """As on `/invocations`: the version (never the alias) or the path, its run and uuid."""
    model_uuid = yaml.safe_load((models.chat / "MLmodel").read_text())["model_uuid"]
    expected = {
        "chat-registry": ("models:/echo-chat/1", echo_chat),
        "chat-local": (str(models.chat), ""),  # saved outside a run: it has none
    }
    for endpoint, (served, run_id) in expected.items():
        body: dict[str, Any] = {"model": endpoint, "messages": [{"role": "user", "content": "hi"}]}
        if route == "/v1/messages":
            body["max_tokens"] = 16
        answer = httpx.post(f"{gateway.url}{route}", json={**body, "stream": stream}, timeout=30)
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-served-model"] == served
        event = recent(gateway, answer.headers["x-request-id"])
        assert (event["served"], event["served_run_id"], event["model_uuid"]) == (
            served,
            run_id,
            model_uuid,
        )
        assert event["served_endpoint"] == endpoint


@pytest.mark.parametrize(
    "header",
    [
        "not json",
        '["a"]',
        '{"team": 3}',
        '{"bad key": "x"}',
        '{"k": "' + "v" * 257 + '"}',
        orjson.dumps({f"k{i}": "v" for i in range(MAX_TAGS + 1)}).decode(),
        '{"k": "' + "v" * 5000 + '"}',
    ],
)
def test_bad_request_tags_are_refused_in_the_routes_protocol(
    gateway: GatewayProcess, header: str
) -> None:
    mlflow = invoke(gateway, "local", **{"x-gateway-tags": header})
    assert mlflow.status_code == 400
    assert mlflow.json()["error_code"] == "BAD_REQUEST"
    openai = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json={"model": "local", "messages": []},
        headers={"x-gateway-tags": header},
    )
    assert openai.status_code == 400
    assert openai.json()["error"]["type"] == "invalid_request_error"


def test_a_bad_tag_to_group_by_is_refused(gateway: GatewayProcess) -> None:
    for group_by in ("tag:a b", "tag:", "tag:x'--"):
        answer = httpx.get(f"{gateway.url}/admin/usage", params={"group_by": group_by})
        assert answer.status_code == 400, answer.text


def _config(gateway: GatewayProcess) -> Path:
    return gateway.log_path.parent / "gateway.yaml"


def _usage_until(gateway: GatewayProcess, group_by: str, done: Any) -> dict[str, int]:
    """Requests per `group_by` value in the durable ledger, once `done` holds (it lags)."""
    deadline = time.monotonic() + 15
    while True:
        rows = httpx.get(f"{gateway.url}/admin/usage", params={"group_by": group_by}).json()
        counted = {row[group_by]: row["requests"] for row in rows["data"]}
        if done(counted) or time.monotonic() > deadline:
            return counted
        time.sleep(0.1)
