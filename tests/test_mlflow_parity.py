"""The gateway against `mlflow models serve`: the same requests must get the same answers.

Every case in CASES is sent to a real MLflow scoring server (`mlflow models serve --env-manager
local`, a subprocess) and to the gateway (a subprocess too) serving the same model folder. Status
codes, media types and parsed JSON bodies must be equal, `error_code` and `message` included.

The gateway differs from MLflow on purpose in a few places (module docstring of
gateway/models/scoring.py). A case that hits one names it in `expected_difference`, and
`what_the_gateway_should_answer` turns MLflow's answer into the gateway's for exactly that
difference, after checking that MLflow really answered the way the difference assumes. Anything
else that differs fails the test.

Nothing in the compared messages is run-specific (no temp paths or object addresses reach them),
with one exception handled at the source rather than by rewriting messages: some MLflow messages
print Python sets (the accepted input fields, a schema's extra columns), whose order depends on
the per-process string hash seed. Both servers run with the same PYTHONHASHSEED, so they build
those sets identically.
"""

from __future__ import annotations

import base64
import enum
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
import yaml

from tests.gateway_process import free_port, run_gateway, wait_until_ready
from tests.models import TestModels, typed_example

pytestmark = pytest.mark.slow

JSON = "application/json"
CSV = "text/csv"
PARQUET = "application/vnd.apache.parquet"

STARTUP_S = 180  # the longest a server may take to start

# See the module docstring: same hash seed, same set order in messages.
SERVER_ENV = {"PYTHONHASHSEED": "0"}

# MLflow's wording for a model that raised (mlflow/pyfunc/scoring_server/__init__.py).
MLFLOW_MODEL_RAISED = (
    "Encountered an unexpected error while evaluating the model. Verify that the serialized"
    " input Dataframe is compatible with the model for inference."
)
# The gateway's answer to a request without Content-Type (gateway/models/scoring.py).
GATEWAY_MISSING_CONTENT_TYPE = (
    "Missing Content-Type header. This predictor only supports the following content types:"
    " Types: ['text/csv', 'application/json', 'application/vnd.apache.parquet']."
)

# --- servers ------------------------------------------------------------------------------------

MLFLOW_SERVED = ("classifier", "typed", "chat")  # compared with MLflow
GATEWAY_ONLY = ("failing", "nan")  # the gateway's improvements, checked on their own


@dataclass(frozen=True)
class Servers:
    mlflow: dict[str, str]  # model name -> base URL of its `mlflow models serve`
    gateway: str  # serves every model of MLFLOW_SERVED and GATEWAY_ONLY, by name
    registry_gateway: str  # serves the `iris` endpoint: two versions from the registry


@contextmanager
def mlflow_serve(model: Path, log_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Start `mlflow models serve` on `model` (without waiting for it); stop it on exit.

    The CLI runs `bash -c "exec uvicorn ..."`, so it needs this venv's bin/ on PATH, and it runs
    in its own session so that the whole process group can be stopped.
    """
    port = free_port()
    env = {
        **os.environ,
        **SERVER_ENV,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    command = [
        sys.executable, "-m", "mlflow", "models", "serve", "-m", str(model),
        "--env-manager", "local", "-p", str(port), "-h", "127.0.0.1",
    ]  # fmt: skip
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        yield f"http://127.0.0.1:{port}", process
    finally:
        _stop_group(process)


def _stop_group(process: subprocess.Popen[bytes]) -> None:
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)  # the group this fixture started, by its id
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def wait_for_ping(url: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"mlflow models serve exited:\n{log_path.read_text()}")
        try:
            if httpx.get(f"{url}/ping", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"mlflow models serve not up after {STARTUP_S}s:\n{log_path.read_text()}")


def local_endpoint(name: str, model: Path) -> dict[str, Any]:
    return {
        "name": name,
        "type": "custom",
        "default": name == "classifier",
        "served_models": [{"model": str(model), "traffic": 100}],
    }


def iris_endpoint(*served: tuple[str, int]) -> dict[str, Any]:
    return {
        "name": "iris",
        "type": "custom",
        "served_models": [{"model": model, "traffic": traffic} for model, traffic in served],
    }


def write_config(path: Path, document: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(document))
    return path


@pytest.fixture(scope="module")
def servers(models: TestModels, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    """Three MLflow scoring servers and two gateways, all started at once (startup is the cost).

    Registry and local models are served by two gateways: one gateway loading both kinds fails
    to start (see test_registry_and_local_models_in_one_config).
    """
    workdir = tmp_path_factory.mktemp("parity")
    local = write_config(
        workdir / "gateway.yaml",
        {
            "endpoints": [
                local_endpoint(name, getattr(models, name))
                for name in (*MLFLOW_SERVED, *GATEWAY_ONLY)
            ]
        },
    )
    registry = write_config(
        workdir / "registry.yaml",
        {
            "registry_uri": models.registry_uri,
            "endpoints": [iris_endpoint(("models:/iris@champion", 50), ("models:/iris/2", 50))],
        },
    )
    with ExitStack() as stack:
        started = {}
        for name in MLFLOW_SERVED:
            log_path = workdir / f"mlflow-{name}.log"
            url, process = stack.enter_context(mlflow_serve(getattr(models, name), log_path))
            started[name] = (url, process, log_path)
        gateways = [
            stack.enter_context(run_gateway(config, workdir=workdir, env=SERVER_ENV, wait=False))
            for config in (local, registry)
        ]
        for url, process, log_path in started.values():
            wait_for_ping(url, process, log_path)
        for gateway in gateways:  # generous: seven processes start at once on a shared CI box
            wait_until_ready(gateway.url, gateway.process, gateway.log_path, timeout=STARTUP_S)
        yield Servers(
            mlflow={name: url for name, (url, _, _) in started.items()},
            gateway=gateways[0].url,
            registry_gateway=gateways[1].url,
        )


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def mlflow_http() -> Iterator[httpx.Client]:
    """A new connection per request to `mlflow models serve`: after a 500 it closes the
    connection it answered on (uvicorn does, once a response has started), and a request already
    sent on it, pooled, would be reset before the close was seen."""
    with httpx.Client(timeout=60, limits=httpx.Limits(max_keepalive_connections=0)) as client:
        yield client


# --- the cases ------------------------------------------------------------------------------------


class Difference(enum.Enum):
    """The documented ways the gateway answers differently from MLflow."""

    TEXT_415 = "415 bodies are JSON {error_code, message}; MLflow sends the message as text/plain"
    MISSING_CONTENT_TYPE = "no Content-Type is a 415 (JSON body); MLflow fails with a 500"
    NO_STACK_TRACE = "error bodies carry no stack_trace; MLflow includes one"
    NAN_AS_NULL = "NaN and ±Infinity in predictions are written as null; MLflow writes bare NaN"
    MODEL_RAISED = "a model that raised: MLflow's message plus the exception, no stack_trace"
    UNPARSABLE_IS_400 = "input MLflow's parser crashes on (a 500) is a 400 BAD_REQUEST naming why"


@dataclass(frozen=True)
class Case:
    id: str
    model: str  # one of MLFLOW_SERVED
    body: bytes
    content_type: str | None = JSON  # None: no Content-Type header at all
    headers: tuple[tuple[str, str], ...] = ()  # more headers, sent as given (names may repeat)
    expected_difference: Difference | None = None
    raised: str = ""  # MODEL_RAISED: how the gateway's message names the exception (its start)

    def request_headers(self) -> list[tuple[str, str]]:
        own = [] if self.content_type is None else [("content-type", self.content_type)]
        return [*own, *self.headers]


def js(document: Any) -> bytes:
    return json.dumps(document).encode()


IRIS = ["sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"]
SETOSA, VIRGINICA = [5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]
BORDERLINE = [6.9, 3.1, 4.9, 1.5]  # a versicolor that iris v1 and v2 classify differently
IRIS_SPLIT = {"dataframe_split": {"columns": IRIS, "data": [SETOSA, VIRGINICA]}}
IRIS_RECORDS = [dict(zip(IRIS, SETOSA, strict=True)), dict(zip(IRIS, VIRGINICA, strict=True))]
IRIS_FRAME = pd.DataFrame([SETOSA, VIRGINICA], columns=IRIS)

TYPED_ROW = {
    "b": True,
    "i": 1,
    "l": 10,
    "f": 0.5,
    "d": 0.25,
    "s": "a",
    "bin": base64.b64encode(b"\x00\x01").decode(),
    "dt": "2024-01-02T03:04:05",
}
TYPED_COLUMNS = {key: [value] for key, value in TYPED_ROW.items()}


_DROP = object()  # typed_records(s=_DROP): the row without column `s`


def typed_records(**changes: Any) -> bytes:
    row = {**TYPED_ROW, **changes}
    return js({"dataframe_records": [{k: v for k, v in row.items() if v is not _DROP}]})


CHAT = [{"role": "user", "content": "hello"}]
CHAT_TURNS = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "first"},
    {"role": "assistant", "content": "echo: first"},
    {"role": "user", "content": "second"},
]

CASES = [
    # --- every input format (classifier) ---
    Case("split", "classifier", js(IRIS_SPLIT)),
    Case("records", "classifier", js({"dataframe_records": IRIS_RECORDS})),
    Case("instances", "classifier", js({"instances": IRIS_RECORDS})),
    Case("inputs-dict", "classifier", js({"inputs": IRIS_FRAME.to_dict(orient="list")})),
    Case("inputs-list", "classifier", js({"inputs": IRIS_RECORDS})),
    Case("json-charset-utf-8", "classifier", js(IRIS_SPLIT), "application/json; charset=utf-8"),
    Case("json-charset-upper", "classifier", js(IRIS_SPLIT), "application/json; charset=UTF-8"),
    Case("params-unused", "classifier", js({**IRIS_SPLIT, "params": {"unknown": 1}})),
    Case("csv", "classifier", IRIS_FRAME.to_csv(index=False).encode(), CSV),
    Case("parquet", "classifier", IRIS_FRAME.to_parquet(), PARQUET),
    # --- malformed requests ---
    Case("malformed-json", "classifier", b'{"dataframe_split": {'),
    Case("json-list", "classifier", js([SETOSA])),
    Case("json-scalar", "classifier", b"null"),
    Case("empty-object", "classifier", b"{}"),
    Case("zero-input-keys", "classifier", js({"data": [SETOSA]})),  # MLflow 1.x's format
    Case("two-input-keys", "classifier", js({**IRIS_SPLIT, "instances": IRIS_RECORDS})),
    Case("split-given-records", "classifier", js({"dataframe_split": IRIS_RECORDS})),
    Case(
        "records-given-split",
        "classifier",
        js({"dataframe_records": IRIS_SPLIT["dataframe_split"]}),
    ),
    Case("json-utf8-bom", "classifier", b"\xef\xbb\xbf" + js(IRIS_SPLIT)),  # json.loads takes it
    Case("json-not-utf8", "classifier", b'{"inputs": ["\xff\xfe"]}'),
    # MLflow's json.loads overflows the stack: MLflow answers a bare 500
    Case(
        "json-deeply-nested",
        "classifier",
        b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        expected_difference=Difference.UNPARSABLE_IS_400,
    ),
    Case("csv-not-utf8", "classifier", b"a,b\n\xff,\xfe\n", CSV),
    Case("csv-empty", "classifier", b"", CSV, expected_difference=Difference.NO_STACK_TRACE),
    Case(
        "parquet-garbage",
        "classifier",
        b"PAR1 not parquet",
        PARQUET,
        expected_difference=Difference.NO_STACK_TRACE,
    ),
    # --- data that does not match the signature ---
    # a missing column: schema enforcement, INVALID_PARAMETER_VALUE
    Case(
        "missing-column",
        "classifier",
        js({"dataframe_split": {"columns": IRIS[:3], "data": [SETOSA[:3]]}}),
    ),
    Case("csv-wrong-columns", "classifier", b"a,b\n1,2\n", CSV),
    # a value that cannot be cast to the column's type: parsing, BAD_REQUEST
    Case(
        "uncastable-value",
        "classifier",
        js({"dataframe_split": {"columns": IRIS, "data": [["x", 1, 2, 3]]}}),
    ),
    # the model itself refuses NaN
    Case(
        "model-raises-on-nan",
        "classifier",
        b'{"dataframe_split": {"columns": ' + js(IRIS) + b', "data": [[5.1, 3.5, 1.4, NaN]]}}',
        expected_difference=Difference.MODEL_RAISED,
        raised="ValueError: Input X contains NaN.",
    ),
    # --- content types ---
    Case(
        "no-content-type",
        "classifier",
        js(IRIS_SPLIT),
        None,
        expected_difference=Difference.MISSING_CONTENT_TYPE,
    ),
    Case(
        "unsupported-content-type",
        "classifier",
        js(IRIS_SPLIT),
        "text/plain",
        expected_difference=Difference.TEXT_415,
    ),
    Case(
        "content-type-extra-parameter",
        "classifier",
        js(IRIS_SPLIT),
        "application/json; format=pandas-split",
        expected_difference=Difference.TEXT_415,
    ),
    Case(
        "charset-latin-1",
        "classifier",
        js(IRIS_SPLIT),
        "application/json; charset=latin-1",
        expected_difference=Difference.TEXT_415,
    ),
    Case(
        "content-type-case",
        "classifier",
        js(IRIS_SPLIT),
        "Application/JSON",
        expected_difference=Difference.TEXT_415,
    ),
    # two Content-Type headers: MLflow (Starlette) reads the first one
    Case(
        "content-type-twice", "classifier", js(IRIS_SPLIT), JSON, headers=(("content-type", CSV),)
    ),
    # --- every column type, and params (typed model) ---
    Case("typed-records", "typed", typed_records()),
    Case(
        "typed-split",
        "typed",
        js({"dataframe_split": {"columns": list(TYPED_ROW), "data": [list(TYPED_ROW.values())]}}),
    ),
    Case("typed-inputs-dict", "typed", js({"inputs": TYPED_COLUMNS})),
    Case("typed-inputs-list", "typed", js({"inputs": [TYPED_ROW]})),
    # MLflow cannot read a datetime column from CSV (pandas refuses the dtype): an error in both
    Case(
        "typed-csv",
        "typed",
        typed_example().to_csv(index=False).encode(),
        CSV,
        expected_difference=Difference.NO_STACK_TRACE,
    ),
    Case("typed-parquet", "typed", typed_example().to_parquet(), PARQUET),
    Case(
        "params",
        "typed",
        js({"dataframe_records": [TYPED_ROW], "params": {"multiplier": 2.5, "label": "y"}}),
    ),
    Case(
        "params-int-for-double", "typed", js({"inputs": [TYPED_ROW], "params": {"multiplier": 3}})
    ),
    Case("params-unknown", "typed", js({"inputs": [TYPED_ROW], "params": {"other": 1}})),
    Case(
        "params-wrong-type", "typed", js({"inputs": [TYPED_ROW], "params": {"multiplier": "big"}})
    ),
    Case("params-not-a-dict", "typed", js({"inputs": [TYPED_ROW], "params": [2.0]})),
    Case("typed-missing-column", "typed", typed_records(s=_DROP)),
    Case("typed-uncastable-int", "typed", typed_records(i="one")),
    Case("typed-bad-datetime", "typed", typed_records(dt="not a date")),
    Case("typed-tz-datetime", "typed", typed_records(dt="2024-01-02T03:04:05+02:00")),
    # a long beyond 64 bits: MLflow's json.loads keeps it an int, and casting it fails
    Case("typed-huge-long", "typed", typed_records(l=10**23)),
    Case(
        "typed-null-double",
        "typed",
        typed_records(d=None),
        expected_difference=Difference.NAN_AS_NULL,
    ),
    # --- chat model: LLM-shaped, unwrapped requests and answers ---
    Case("chat", "chat", js({"messages": CHAT})),
    Case(
        "chat-turns-and-params",
        "chat",
        js({"messages": CHAT_TURNS, "temperature": 0.5, "max_tokens": 8, "stop": ["x"]}),
    ),
    Case(
        "chat-unicode",
        "chat",
        js({"messages": [{"role": "user", "content": "héllo ☃"}]}),
        "application/json; charset=utf-8",
    ),
    Case("chat-wrapped-in-inputs", "chat", js({"inputs": {"messages": CHAT}})),
    Case("chat-bad-param", "chat", js({"messages": CHAT, "temperature": "hot"})),
    Case("chat-message-without-role", "chat", js({"messages": [{"content": "hello"}]})),
    Case("chat-messages-not-a-list", "chat", js({"messages": "hello"})),
]


# --- comparing ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    status: int
    media_type: str
    body: Any  # parsed JSON, or the text of a non-JSON body


def answer(response: httpx.Response, *, strict: bool) -> Answer:
    """The parsed answer; `strict`: NaN/Infinity literals are not JSON (the gateway's promise)."""
    media_type = response.headers.get("content-type", "").split(";")[0].strip()
    if media_type != JSON:
        return Answer(response.status_code, media_type, response.text)
    constants = _reject_constant if strict else None
    return Answer(
        response.status_code, media_type, json.loads(response.text, parse_constant=constants)
    )


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def what_the_gateway_should_answer(case: Case, mlflow: Answer, gateway: Answer) -> Answer:
    """MLflow's answer, changed by exactly the case's documented difference (none: unchanged)."""
    difference = case.expected_difference
    if difference is None:
        return mlflow
    if difference is Difference.TEXT_415:
        assert (mlflow.status, mlflow.media_type) == (415, "text/plain"), mlflow
        return Answer(415, JSON, {"error_code": "BAD_REQUEST", "message": mlflow.body})
    if difference is Difference.MISSING_CONTENT_TYPE:
        assert (mlflow.status, mlflow.body) == (500, "Internal Server Error"), mlflow
        return Answer(
            415, JSON, {"error_code": "BAD_REQUEST", "message": GATEWAY_MISSING_CONTENT_TYPE}
        )
    if difference is Difference.NO_STACK_TRACE:
        assert mlflow.media_type == JSON and "stack_trace" in mlflow.body, mlflow
        return Answer(mlflow.status, JSON, _without_stack_trace(mlflow.body))
    if difference is Difference.NAN_AS_NULL:
        expected = _non_finite_as_null(mlflow.body)
        assert expected != mlflow.body, f"MLflow wrote no NaN or Infinity: {mlflow}"
        return Answer(mlflow.status, JSON, expected)
    if difference is Difference.MODEL_RAISED:
        assert mlflow.status == 400 and mlflow.body["message"] == MLFLOW_MODEL_RAISED, mlflow
        body = _without_stack_trace(mlflow.body)
        # MLflow's message, then " Error: " and the exception; how the exception's own text
        # goes on (sklearn's advice, say) is the model's business: only its start is pinned.
        named = f"{MLFLOW_MODEL_RAISED} Error: {case.raised}"
        message = gateway.body.get("message", "") if isinstance(gateway.body, dict) else ""
        body["message"] = message if message.startswith(named) else named
        return Answer(400, JSON, body)
    if difference is Difference.UNPARSABLE_IS_400:
        assert (mlflow.status, mlflow.body) == (500, "Internal Server Error"), mlflow
        message = gateway.body.get("message", "") if isinstance(gateway.body, dict) else ""
        prefix = "Failed to parse the input: RecursionError"
        return Answer(
            400,
            JSON,
            {
                "error_code": "BAD_REQUEST",
                "message": message if message.startswith(prefix) else prefix,
            },
        )
    raise AssertionError(f"unknown difference {difference}")


def _without_stack_trace(body: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in body.items() if key != "stack_trace"}


def _non_finite_as_null(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _non_finite_as_null(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_non_finite_as_null(item) for item in value]
    return value


def gateway_paths(model: str) -> list[str]:
    paths = [f"/serving-endpoints/{model}/invocations"]
    if model == "classifier":  # the default endpoint also answers /invocations
        paths.append("/invocations")
    return paths


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_same_answer_as_mlflow(
    case: Case, servers: Servers, http: httpx.Client, mlflow_http: httpx.Client
) -> None:
    headers = case.request_headers()
    url = f"{servers.mlflow[case.model]}/invocations"
    mlflow = answer(mlflow_http.post(url, content=case.body, headers=headers), strict=False)
    for path in gateway_paths(case.model):
        response = http.post(f"{servers.gateway}{path}", content=case.body, headers=headers)
        gateway = answer(response, strict=True)
        expected = what_the_gateway_should_answer(case, mlflow, gateway)
        if gateway != expected:
            pytest.fail(f"POST {path}: {explain(expected, gateway)}", pytrace=False)


def explain(expected: Answer, gateway: Answer) -> str:
    """What differs, field by field (pytest's own diff truncates long messages)."""
    lines = ["the gateway answers differently from MLflow:"]
    for field in ("status", "media_type"):
        if getattr(expected, field) != getattr(gateway, field):
            lines.append(f"  {field}: {getattr(expected, field)!r} != {getattr(gateway, field)!r}")
    if isinstance(expected.body, dict) and isinstance(gateway.body, dict):
        for key in sorted(expected.body.keys() | gateway.body.keys()):
            want, got = expected.body.get(key, "<absent>"), gateway.body.get(key, "<absent>")
            if want != got:
                lines.append(f"  body[{key!r}]: expected {want!r}\n{' ' * 14}gateway  {got!r}")
    elif expected.body != gateway.body:
        lines.append(f"  body: expected {expected.body!r}\n        gateway  {gateway.body!r}")
    return "\n".join(lines)


def test_cases_cover_every_documented_difference() -> None:
    assert {case.expected_difference for case in CASES} >= set(Difference)
    assert len({case.id for case in CASES}) == len(CASES)


# --- the gateway's improvements, on their own ---------------------------------------------------


def test_missing_content_type_is_a_json_415(servers: Servers, http: httpx.Client) -> None:
    response = http.post(
        f"{servers.gateway}/serving-endpoints/classifier/invocations", content=js(IRIS_SPLIT)
    )
    assert response.status_code == 415
    assert response.headers["content-type"] == JSON
    assert response.json() == {"error_code": "BAD_REQUEST", "message": GATEWAY_MISSING_CONTENT_TYPE}


def test_nan_and_infinity_are_written_as_null(servers: Servers, http: httpx.Client) -> None:
    response = http.post(
        f"{servers.gateway}/serving-endpoints/nan/invocations",
        content=js({"inputs": {"x": [1.0]}}),
        headers={"content-type": JSON},
    )
    assert response.status_code == 200
    assert answer(response, strict=True).body == {
        "predictions": [{"value": 1.5}, {"value": None}, {"value": None}, {"value": None}]
    }


def test_a_failing_model_is_a_400_naming_the_exception(
    servers: Servers, http: httpx.Client
) -> None:
    response = http.post(
        f"{servers.gateway}/serving-endpoints/failing/invocations",
        content=js({"inputs": {"x": [1.0]}}),
        headers={"content-type": JSON},
    )
    assert response.status_code == 400
    body = answer(response, strict=True).body
    assert body["error_code"] == "BAD_REQUEST"
    assert body["message"] == f"{MLFLOW_MODEL_RAISED} Error: ValueError: boom"
    assert "stack_trace" not in body


# --- the model registry -------------------------------------------------------------------------


def test_alias_and_version_split_one_endpoint(
    servers: Servers, models: TestModels, http: httpx.Client
) -> None:
    """`models:/iris@champion` (v1) and `models:/iris/2` at 50/50: both answer, each as itself."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=models.registry_uri, registry_uri=models.registry_uri)
    frame = pd.DataFrame([SETOSA, VIRGINICA, BORDERLINE], columns=IRIS)
    expected = {
        f"models:/iris/{version}": mlflow.pyfunc.load_model(
            client.get_model_version_download_uri("iris", version)
        )
        .predict(frame)
        .tolist()
        for version in ("1", "2")
    }
    assert (
        expected["models:/iris/1"] != expected["models:/iris/2"]
    )  # so that the label is checked, too
    served: Counter[str] = Counter()
    for _ in range(40):  # both are picked, but for a chance of 2 in 2**40
        response = http.post(
            f"{servers.registry_gateway}/serving-endpoints/iris/invocations",
            content=js({"dataframe_split": frame.to_dict(orient="split", index=False)}),
            headers={"content-type": JSON},
        )
        assert response.status_code == 200, response.text
        label = response.headers["x-served-model"]
        assert label in expected, label
        served[label] += 1
        assert response.json() == {"predictions": expected[label]}, label
    assert set(served) == {"models:/iris/1", "models:/iris/2"}, served


def test_registry_and_local_models_in_one_config(
    models: TestModels, tmp_path: Path, http: httpx.Client
) -> None:
    """One gateway serving a registry model and a local folder side by side becomes ready."""
    config = write_config(
        tmp_path / "mixed.yaml",
        {
            "registry_uri": models.registry_uri,
            "endpoints": [
                local_endpoint("nan", models.nan),
                iris_endpoint(("models:/iris@champion", 100)),
            ],
        },
    )
    with run_gateway(config, workdir=tmp_path, wait=False) as gateway:
        try:  # alone, it is ready in about 10 s
            wait_until_ready(gateway.url, gateway.process, gateway.log_path, timeout=30)
        except TimeoutError as exc:
            ready = http.get(f"{gateway.url}/ready")
            pytest.fail(
                f"a gateway loading a registry model and a local model never became ready:"
                f" GET /ready still answers {ready.status_code} {ready.text}\n{exc}",
                pytrace=False,
            )
        response = http.post(
            f"{gateway.url}/serving-endpoints/iris/invocations",
            content=js({"dataframe_split": {"columns": IRIS, "data": [SETOSA]}}),
            headers={"content-type": JSON},
        )
        assert response.status_code == 200, response.text
        assert response.headers["x-served-model"] == "models:/iris/1"
