"""Traces into MLflow: real calls through a real gateway, exported to a real `mlflow server`
(sqlite backend) and read back with `mlflow.search_traces`; and a tracking server that hangs,
which must cost the gateway nothing but dropped (and counted) traces."""

from __future__ import annotations

import hashlib
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import mlflow
import openai
import orjson
import pytest
from mlflow.entities import Trace
from pydantic import SecretStr

from gateway.auth.keys import key_digest
from gateway.config.loading import parse_config
from gateway.config.redaction import redacted
from gateway.config.reload import restart_only_issues
from gateway.config.schema import MlflowTracingConfig
from gateway.errors import ConfigError
from gateway.metering.usage import UsageEvent
from gateway.tracing import MlflowServer, TraceExporter, TraceRecord
from tests.fakes.openai_upstream import FakeOpenAI
from tests.fakes.trace_sink import FakeTraceSink
from tests.gateway_process import GatewayProcess, run_gateway, write_config
from tests.llm_fixtures import ADMIN_KEY, usage_event
from tests.mlflow_server import MlflowServerProcess, run_mlflow_server
from tests.models import IRIS_ONE_ROW, TestModels

pytestmark = pytest.mark.slow

KEY = "gw-tracing-key-0123456789abcdef0123"
UPSTREAM_KEY = "sk-upstream-tracing-secret-77"
EXPERIMENT = "gateway-traffic-tests"
CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
EXPECTED_TRACES = 7  # the calls `traces` makes to traced endpoints


def _headers(**extra: str) -> dict[str, str]:
    return {"authorization": f"Bearer {KEY}", **extra}


def _keys_yaml() -> str:
    digest = hashlib.sha256(KEY.encode()).hexdigest()
    return f"""
auth:
  keys:
    - {{id: team-a, sha256: "{digest}"}}
    - {{id: admin, sha256: "{key_digest(ADMIN_KEY)}", roles: [user, admin]}}
"""


def _llm(name: str, task: str, upstream: FakeOpenAI, extra: str = "") -> str:
    return f"""
  - name: {name}
    type: foundation
    task: {task}
    retries: 0
    pricing: {{input_per_million: 2.0, output_per_million: 8.0}}
    deployments: [{{api_base: "{upstream.base_url}", model: m-{name}, api_key: "{UPSTREAM_KEY}"}}]
    {extra}"""


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServerProcess]:
    with run_mlflow_server(tmp_path_factory.mktemp("mlflow-server")) as server:
        yield server


def search_traces(server: MlflowServerProcess, want: int, timeout_s: float = 60) -> list[Trace]:
    """The experiment's traces, once at least `want` have arrived."""
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(server.url)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            experiment = mlflow.get_experiment_by_name(EXPERIMENT)
            traces: list[Trace] = []
            if experiment is not None:
                found = mlflow.search_traces(
                    locations=[experiment.experiment_id], return_type="list", max_results=500
                )
                traces = list(found)
            if len(traces) >= want or time.monotonic() > deadline:
                return traces
            time.sleep(0.3)
    finally:
        mlflow.set_tracking_uri(previous)


@pytest.fixture(scope="module")
def traced(
    models: TestModels,
    upstream: FakeOpenAI,
    mlflow_server: MlflowServerProcess,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[dict[str, Trace], GatewayProcess]]:
    """Real calls of every kind through a traced gateway; their traces, by client request id."""
    workdir: Path = tmp_path_factory.mktemp("tracing")
    config = write_config(
        workdir,
        f"""
{_keys_yaml()}
tracing:
  mlflow: {{tracking_uri: "{mlflow_server.url}", experiment: {EXPERIMENT}}}
  sample_rate: 1.0
  flush_interval_s: 0.2
  max_preview_bytes: 2000
endpoints:
  - name: iris
    type: custom
    served_models: [{{model: "{models.classifier}"}}]
{_llm("chat", "chat", upstream)}
{_llm("embed", "embeddings", upstream)}
{_llm("quiet", "chat", upstream, "tracing: {enabled: false}")}
{_llm("flaky", "chat", upstream)}
""",
    )
    with run_gateway(config, workdir=workdir) as gateway:
        with httpx.Client(base_url=gateway.url, timeout=30) as client:

            def post(path: str, body: dict[str, Any], rid: str, **extra: str) -> httpx.Response:
                return client.post(
                    path, json=body, headers=_headers(**{"x-request-id": rid}, **extra)
                )

            tags = json.dumps({"team": "search", "mlflow.user": "forged"})
            assert post(
                "/serving-endpoints/iris/invocations",
                IRIS_ONE_ROW,
                "iris-ok",
                **{"x-gateway-tags": tags},
            ).is_success
            assert (
                post("/serving-endpoints/iris/invocations", {"bad": 1}, "iris-bad").status_code
                == 400
            )
            upstream.inject("status", status=503, path="/v1/chat/completions")
            chat = {"model": "flaky", "messages": [{"role": "user", "content": "hi"}]}
            assert post("/v1/chat/completions", chat, "flaky-502").status_code == 502
            quiet = {"model": "quiet", "messages": [{"role": "user", "content": "hi"}]}
            assert post("/v1/chat/completions", quiet, "quiet-1").is_success
        with openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=KEY, max_retries=0) as sdk:
            parent = {"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"}
            sdk.chat.completions.create(
                model="chat",
                messages=[{"role": "user", "content": "what is the answer"}],
                extra_headers={"x-request-id": "chat-1", **parent},
            )
            stream = sdk.chat.completions.create(
                model="chat",
                messages=[{"role": "user", "content": "stream it please"}],
                stream=True,
                extra_headers={"x-request-id": "chat-stream"},
            )
            assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
            sdk.embeddings.create(
                model="embed", input="embed me", extra_headers={"x-request-id": "embed-1"}
            )
            sdk.chat.completions.create(
                model="chat",
                messages=[{"role": "user", "content": "x" * 5000}],
                extra_headers={"x-request-id": "chat-long"},
            )
        traces = search_traces(mlflow_server, EXPECTED_TRACES)
        by_client_id = {
            str(_root(trace).attributes.get("gateway.client_request_id")): trace for trace in traces
        }
        yield by_client_id, gateway


def _root(trace: Trace) -> Any:
    return next(span for span in trace.data.spans if span.parent_id is None)


def _model_span(trace: Trace) -> Any:
    return next(span for span in trace.data.spans if span.parent_id is not None)


def test_every_traced_call_is_one_trace_and_untraced_endpoints_send_none(
    traced: tuple[dict[str, Trace], GatewayProcess],
) -> None:
    traces, _ = traced
    assert sorted(traces) == sorted(
        ["iris-ok", "iris-bad", "flaky-502", "chat-1", "chat-stream", "embed-1", "chat-long"]
    )


def test_a_chat_call_has_a_root_and_a_model_span_with_its_usage(
    traced: tuple[dict[str, Trace], GatewayProcess],
) -> None:
    traces, gateway = traced
    trace = traces["chat-1"]
    info = trace.info
    assert info.state == "OK"
    root, model = _root(trace), _model_span(trace)
    assert root.name == "chat" and root.span_type == "CHAIN"
    assert model.span_type == "CHAT_MODEL" and model.name == "chat/0"  # deployment 0
    assert model.start_time_ns >= root.start_time_ns and model.end_time_ns <= root.end_time_ns
    usage = info.token_usage
    assert usage is not None and usage["input_tokens"] > 0 and usage["output_tokens"] > 0
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    cost = model.attributes["mlflow.llm.cost"]
    assert cost["total_cost"] == pytest.approx(
        usage["input_tokens"] * 2e-6 + usage["output_tokens"] * 8e-6
    )
    # the same call and figures as its usage row
    row = usage_event(gateway, "chat-1")
    assert info.tags["gateway.request_id"] == row["request_id"]
    assert row["prompt_tokens"] == usage["input_tokens"]
    assert row["completion_tokens"] == usage["output_tokens"]
    assert cost["total_cost"] == pytest.approx(row["cost_usd"])
    assert info.request_preview and "what is the answer" in info.request_preview
    assert info.response_preview
    assert root.inputs["messages"][0]["content"] == "what is the answer"
    assert root.outputs["choices"][0]["message"]["content"]
    assert info.trace_metadata["mlflow.trace.user"] == "team-a"
    assert info.tags["gateway.endpoint"] == "chat" and info.tags["gateway.served"] == "chat/0"
    assert info.tags["gateway.principal"] == "team-a" and info.tags["gateway.status"] == "200"
    # linked to the caller's span from `traceparent`, not merged into its trace
    assert root.attributes["gateway.caller_trace_id"] == CALLER_TRACE


def test_streams_and_embeddings_are_traced(
    traced: tuple[dict[str, Trace], GatewayProcess],
) -> None:
    traces, _ = traced
    stream = traces["chat-stream"]
    assert stream.info.state == "OK"
    assert stream.info.token_usage and stream.info.token_usage["output_tokens"] > 0
    assert "stream it please" in (stream.info.request_preview or "")
    embed = traces["embed-1"]
    assert _model_span(embed).span_type == "EMBEDDING"
    assert embed.info.token_usage and embed.info.token_usage["input_tokens"] > 0


def test_a_custom_model_call_names_the_model_and_carries_the_request_tags(
    traced: tuple[dict[str, Trace], GatewayProcess], models: TestModels
) -> None:
    traces, _ = traced
    trace = traces["iris-ok"]
    root, model = _root(trace), _model_span(trace)
    assert trace.info.state == "OK"
    assert root.name == "iris" and model.name == str(models.classifier)
    assert model.attributes["gateway.model_uuid"]
    assert root.inputs == IRIS_ONE_ROW and "predictions" in root.outputs
    assert trace.info.tags["team"] == "search"
    # a client cannot set MLflow's own tags through request tags
    assert trace.info.tags.get("mlflow.user") != "forged"


def test_failed_calls_are_error_traces(traced: tuple[dict[str, Trace], GatewayProcess]) -> None:
    traces, _ = traced
    bad = traces["iris-bad"]
    assert bad.info.state == "ERROR" and bad.info.tags["gateway.status"] == "400"
    upstream_down = traces["flaky-502"]
    assert upstream_down.info.state == "ERROR"
    assert _root(upstream_down).status.description == "HTTP 502"
    assert len(upstream_down.data.spans) == 2  # the upstream was called


def test_long_payloads_are_cut_and_flagged(traced: tuple[dict[str, Trace], GatewayProcess]) -> None:
    traces, _ = traced
    root = _root(traces["chat-long"])
    assert root.attributes["gateway.request_truncated"] is True
    assert isinstance(root.inputs, str) and len(root.inputs.encode()) == 2000


def test_traces_never_hold_a_key(traced: tuple[dict[str, Trace], GatewayProcess]) -> None:
    traces, _ = traced
    for trace in traces.values():
        text = trace.to_json()
        assert KEY not in text and UPSTREAM_KEY not in text and "Bearer" not in text


def _hanging_server() -> socket.socket:
    """A listener that accepts connections (the kernel does) and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    return listener


def test_a_hanging_tracking_server_costs_only_dropped_traces(
    upstream: FakeOpenAI, tmp_path: Path
) -> None:
    with _hanging_server() as listener:
        port = listener.getsockname()[1]
        config = write_config(
            tmp_path,
            f"""
{_keys_yaml()}
tracing:
  mlflow: {{tracking_uri: "http://127.0.0.1:{port}", experiment_id: "1"}}
  timeout_s: 2
  batch_size: 1
  max_queued_traces: 2
  flush_interval_s: 0.05
endpoints:
{_llm("chat", "chat", upstream)}
""",
        )
        body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}
        with run_gateway(config, workdir=tmp_path) as gateway:
            with httpx.Client(base_url=gateway.url, timeout=10) as client:
                started = time.monotonic()
                for _ in range(40):
                    assert client.post(
                        "/v1/chat/completions", json=body, headers=_headers()
                    ).is_success
                took = time.monotonic() - started
                metrics = client.get("/metrics").text
            stopping = time.monotonic()
            gateway.process.terminate()
            gateway.process.wait(timeout=60)
            stopped_in = time.monotonic() - stopping
        # Had calls waited for the exporter (2 s per attempt), 40 would take minutes.
        assert took < 30, took
        dropped = [
            line
            for line in metrics.splitlines()
            if line.startswith('gateway_traces_dropped_total{reason="queue_full"}')
        ]
        assert dropped and float(dropped[0].split()[-1]) >= 30
        # one warning for the outage, not one per trace
        assert gateway.log().count("cannot send traces") == 1
        assert "Traceback" not in gateway.log()
        # a shutdown gives up on an unreachable MLflow after one timeout, not one per trace
        assert stopped_in < 20, stopped_in


# --- the exporter against a tracking server that fails ------------------------------------------


def _record() -> TraceRecord:
    now = time.time_ns()
    event = UsageEvent(
        request_id="r1",
        time=now / 1e9,
        principal="p",
        groups=(),
        endpoint="chat",
        served="chat/0",
        route="/v1/chat/completions",
        status=200,
        latency_ms=1.0,
        overhead_ms=0.1,
    )
    return TraceRecord(event, "chat", now, now + 10**6, now, now + 10**6, b"{}", b"{}", 100)


def _export_with(failures: list[int]) -> tuple[list[int], dict[str, int], list[str]]:
    """Send one trace to a sink failing with `failures` first; (exported, dropped by reason,
    the `Authorization` headers received)."""
    exported: list[int] = []
    dropped: dict[str, int] = {}
    with FakeTraceSink() as sink:
        for status in failures:
            sink.inject("status", status=status, message="scripted failure")
        config = MlflowTracingConfig(
            tracking_uri=sink.url, experiment_id="7", token=SecretStr("tracking-token-1")
        )
        exporter = TraceExporter(
            MlflowServer(config, timeout_s=5),
            batch_size=10,
            flush_interval_s=0.01,
            max_queued=10,
            on_export=exported.append,
            on_drop=lambda reason, n: dropped.__setitem__(reason, dropped.get(reason, 0) + n),
        )
        exporter.start()
        exporter.offer(_record())
        deadline = time.monotonic() + 30
        while not exported and not dropped and time.monotonic() < deadline:
            time.sleep(0.02)
        exporter.close()
        received = [request.headers["authorization"] for request in sink.requests]
        assert {request.headers["x-mlflow-experiment-id"] for request in sink.requests} == {"7"}
        return exported, dropped, received


def test_a_failing_tracking_server_is_retried_until_it_takes_the_batch() -> None:
    exported, dropped, received = _export_with([503, 502])
    assert exported == [1] and not dropped
    assert received == ["Bearer tracking-token-1"] * 3


def test_a_batch_the_tracking_server_rejects_is_dropped_without_retries() -> None:
    exported, dropped, received = _export_with([400])
    assert not exported and dropped == {"rejected": 1}
    assert len(received) == 1


# --- the config ------------------------------------------------------------------------------------


def test_a_tracking_uri_that_is_not_http_is_refused_with_its_path() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config("tracing: {mlflow: {tracking_uri: 'file:///tmp/mlruns'}}\n", environ={})
    (issue,) = caught.value.issues
    assert issue.path == "tracing.mlflow.tracking_uri"
    assert "MLflow tracking server" in issue.message


def test_the_tracking_token_is_masked_and_the_destination_needs_a_restart() -> None:
    text = (
        "tracing:\n"
        "  mlflow: {tracking_uri: 'http://mlflow:5000', token: '${MLFLOW_TOKEN}'}\n"
        "  sample_rate: 0.5\n"
    )
    old = parse_config(text, environ={"MLFLOW_TOKEN": "tok-secret-9"})
    assert "tok-secret-9" not in orjson.dumps(redacted(old)).decode()
    moved = parse_config(
        text.replace("mlflow:5000", "mlflow-2:5000"), environ={"MLFLOW_TOKEN": "tok-secret-9"}
    )
    (issue,) = restart_only_issues(old, moved)
    assert issue.path == "tracing.mlflow" and "tok-secret-9" not in issue.message
    resampled = parse_config(text.replace("0.5", "0.1"), environ={"MLFLOW_TOKEN": "tok-secret-9"})
    assert restart_only_issues(old, resampled) == []  # the rate is per runtime: reloadable


def test_traces_can_be_searched_by_gateway_tag(
    traced: tuple[dict[str, Trace], GatewayProcess], mlflow_server: MlflowServerProcess
) -> None:
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(mlflow_server.url)
    try:
        experiment = mlflow.get_experiment_by_name(EXPERIMENT)
        assert experiment is not None
        found = mlflow.search_traces(
            locations=[experiment.experiment_id],
            filter_string="tags.`gateway.endpoint` = 'chat'",
            return_type="list",
        )
    finally:
        mlflow.set_tracking_uri(previous)
    ids = {str(_root(trace).attributes.get("gateway.client_request_id")) for trace in found}
    assert ids == {"chat-1", "chat-stream", "chat-long"}
