"""MLflow's own scoring-server test suite, ported to run against a real gateway.

MLflow tests its scoring server in `tests/pyfunc/test_scoring_server.py`, scoring each model
in-process through FastAPI's TestClient (`tests/pyfunc/utils.py`, `score_model_in_process`).
Here every case of that file about the HTTP scoring protocol is sent instead over real HTTP to
one gateway process (`python -m gateway serve`) serving real MLflow models, one endpoint per model
(saved by `tests/models.py`, `build_scoring_suite_models`), and must pass. The source read is
the newest copy of the file that was available (MLflow's master branch, December 2025; the
installed MLflow is 3.17.2, whose parsing functions the gateway calls, so its messages are the
ones asserted). The cases are rewritten, not copied; each test names the MLflow test it ports.

Where the gateway differs from `mlflow models serve` on purpose (README, section "Custom models
and the MLflow scoring protocol", table "Where we differ from `mlflow models serve`, on
purpose"), a case asserts the gateway's documented behaviour and names the row (`README_ROW_*`).

MLflow's scoring requests go to `POST /invocations`. Each case here goes to
`/serving-endpoints/{name}/invocations`; the cases on `knn`, the default endpoint, also go to
`/invocations`, which must answer exactly the same.

Substitutions (the same protocol, other models):
- the two-input Keras model of the `tf_serving_keras_*` cases is a pyfunc with the same tensor
  signature (`a` and `b`, float64, shape (-1, 2)): TensorFlow is not installed here;
- models MLflow logs to a run (`runs:/.../model`) are saved to folders: how a model is found is
  not the scoring protocol (the registry has its own tests, tests/test_mlflow_parity.py);
- MLflow's tests of parsing helpers called directly (`infer_and_parse_data`, `parse_csv_input`,
  `_get_jsonable_obj`, `NumpyEncoder`, `_split_data_and_params_for_llm_input`) are ported as
  requests whose model answers what it was given (its frame, or each column's dtype), so the
  same facts are checked at the gateway's door.

Skipped, with the reason:
- `test_get_cmd`: the `uvicorn` command line and the timeout variable that `mlflow models serve`
  builds for its worker process; MLflow's process management, not the protocol.
- In `test_scoring_server_client`, starting the server through `get_flavor_backend(...).serve`
  with a conda environment: MLflow's process and environment management. The client half is
  ported: `ScoringServerClient` against the gateway (`wait_server_ready`, `invoke`,
  `get_version`).

Beyond MLflow's file, the rest of the protocol the gateway serves is checked the same way at
the end: `/ping`, `/health`, `/version`, Parquet bodies, NaN in predictions, a missing
Content-Type, a charset other than UTF-8 and an oversize body.
"""

from __future__ import annotations

import functools
import json
import random
import string
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow.utils.proto_json_utils import NumpyEncoder
from mlflow.version import VERSION

from tests.gateway_process import run_gateway
from tests.models import TestModels
from tests.scoring_models import (
    ALL_TYPES,
    CHAT_TURNS,
    CSV_TYPES,
    STRING_ROWS,
    ScoringSuiteModels,
    all_types_frame,
    build_scoring_suite_models,
)

pytestmark = pytest.mark.slow

JSON = "application/json"
CSV = "text/csv"
PARQUET = "application/vnd.apache.parquet"
MAX_BODY_BYTES = 256 * 1024  # small, so that the 413 case is cheap; every other body fits

# The rows of README's table "Where we differ from `mlflow models serve`, on purpose".
README_ROW_NO_CONTENT_TYPE = "no `Content-Type` header"
README_ROW_415_BODIES = "415 bodies (content type, charset, parameters)"
README_ROW_NAN = "NaN / Infinity in predictions"
README_ROW_MODEL_RAISES = "the model raises"
README_ROW_UNPARSABLE = "input that cannot be parsed (an empty CSV or Parquet body)"
README_ROW_BODY_LIMIT = "body larger than allowed"
README_ROW_VERSION = "`GET /version`"


@functools.cache
def _readme_rows() -> frozenset[str]:
    """The first cells of the README's table of deliberate differences."""
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    table = readme.split("**Where we differ from `mlflow models serve`, on purpose:**")[1]
    lines = table.strip().split("\n\n")[0].splitlines()[2:]  # after the header and rule
    return frozenset(line.split(" | ")[0].removeprefix("| ") for line in lines)


def relies_on(row: str) -> None:
    """The case asserts the gateway's side of this README row: the row must be there."""
    assert row in _readme_rows(), f"README has no row {row!r}: {sorted(_readme_rows())}"


REQUIRED_INPUT_FORMAT = "The input must be a JSON dictionary with exactly one of the input fields"
MODEL_RAISED = (
    "Encountered an unexpected error while evaluating the model. Verify that the serialized"
    " input Dataframe is compatible with the model for inference."
)


# --- the gateway ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Suite:
    url: str
    models: ScoringSuiteModels


@pytest.fixture(scope="module")
def suite(models: TestModels, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Suite]:
    """One gateway serving every model of the suite, each as its own endpoint."""
    workdir = tmp_path_factory.mktemp("scoring-suite")
    built = build_scoring_suite_models(workdir / "models")
    served: dict[str, Path] = {**built.paths, "nan": models.nan}
    config = workdir / "gateway.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "server": {"max_body_bytes": MAX_BODY_BYTES},
                "endpoints": [
                    {
                        "name": name,
                        "type": "custom",
                        "default": name == "knn",
                        "served_models": [{"model": str(path), "traffic": 100}],
                    }
                    for name, path in served.items()
                ],
            }
        )
    )
    with run_gateway(config, workdir=workdir) as gateway:
        yield Suite(gateway.url, built)


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=60) as client:
        yield client


def score(
    http: httpx.Client,
    suite: Suite,
    endpoint: str,
    data: Any,
    content_type: str | None = JSON,
) -> httpx.Response:
    """POST `data` to the endpoint's invocations route, encoded as MLflow's test helper does:
    a DataFrame as `dataframe_split` (index included), text and bytes as they are.

    On `knn`, the default endpoint, `/invocations` must give exactly the same answer.
    """
    if isinstance(data, pd.DataFrame):
        data = json.dumps({"dataframe_split": data.to_dict(orient="split")})
    body = data.encode() if isinstance(data, str) else data
    headers = {} if content_type is None else {"content-type": content_type}
    named = f"{suite.url}/serving-endpoints/{endpoint}/invocations"
    response = http.post(named, content=body, headers=headers)
    if endpoint == "knn":
        default = http.post(f"{suite.url}/invocations", content=body, headers=headers)
        assert (default.status_code, default.content) == (response.status_code, response.content)
    return response


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    """The MLflow-shaped error body of `response`, checked to be JSON with `status`."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == JSON
    body: dict[str, Any] = response.json()
    assert set(body) >= {"error_code", "message"}, body
    return body


def predictions(response: httpx.Response) -> Any:
    assert response.status_code == 200, response.text
    return response.json()["predictions"]


def knn_frame(suite: Suite) -> pd.DataFrame:
    return pd.DataFrame(suite.models.knn_rows)


def knn_expected(suite: Suite) -> list[Any]:
    answer: list[Any] = suite.models.knn.predict(suite.models.knn_rows).tolist()
    return answer


# --- malformed requests ---------------------------------------------------------------------


def test_malformed_json_is_a_bad_request(suite: Suite, http: httpx.Client) -> None:
    """test_scoring_server_responds_to_malformed_json_input_with_error_code_and_message"""
    body = error_of(score(http, suite, "knn", "this is,,,, not valid json"), 400)
    assert body["error_code"] == "BAD_REQUEST"
    assert "Invalid input. Ensure that input is a valid JSON formatted string." in body["message"]


@pytest.mark.parametrize(
    "document",
    [
        1,
        "1",
        [1],
        {"not": "a serialized dataframe"},
        {"dataframe_records": [], "dataframe_split": {"data": []}},
    ],
    ids=["int", "string", "list", "no-input-field", "two-input-fields"],
)
def test_json_without_exactly_one_input_field_is_a_bad_request(
    suite: Suite, http: httpx.Client, document: Any
) -> None:
    """test_scoring_server_responds_to_invalid_json_format_with_error_code_and_message"""
    body = error_of(score(http, suite, "knn", json.dumps(document)), 400)
    assert body["error_code"] == "BAD_REQUEST"
    assert REQUIRED_INPUT_FORMAT in body["message"]


@pytest.mark.parametrize(
    ("field", "orient", "message"),
    [
        ("dataframe_split", "records", "Dataframe split format must be a dictionary. Got list"),
        (
            "dataframe_records",
            "split",
            "Dataframe records format must be a list of records. Got dictionary.",
        ),
    ],
)
def test_split_and_records_in_each_others_shape_are_bad_requests(
    suite: Suite, http: httpx.Client, field: str, orient: Any, message: str
) -> None:
    """test_scoring_server_responds_to_invalid_pandas_input_format_with_stacktrace_and_error_code"""
    document = {field: knn_frame(suite).to_dict(orient=orient)}
    body = error_of(score(http, suite, "knn", json.dumps(document)), 400)
    assert body["error_code"] == "BAD_REQUEST"
    assert message in body["message"]


def test_split_that_is_not_a_dataframe_is_a_bad_request(suite: Suite, http: httpx.Client) -> None:
    """test_scoring_server_responds_to_invalid_dataframe_with_stacktrace_and_error_code"""
    document = {"dataframe_split": {"index": [1, 2], "data": [[1], [2], [3]]}}
    body = error_of(score(http, suite, "knn", json.dumps(document)), 400)
    assert body["error_code"] == "BAD_REQUEST"
    assert (
        "Provided dataframe_split field is not a valid dataframe representation" in body["message"]
    )


def test_dataframe_the_model_cannot_score(suite: Suite, http: httpx.Client) -> None:
    """test_scoring_server_responds_to_incompatible_inference_dataframe_with_stacktrace_and_error_code

    One column where the classifier takes two: the model raises. MLflow answers 400
    BAD_REQUEST with a `stack_trace`; the gateway names the exception in the message instead
    (README row: the model raises).
    """
    relies_on(README_ROW_MODEL_RAISES)
    body = error_of(score(http, suite, "knn", pd.DataFrame(np.array(range(10)))), 400)
    assert body["error_code"] == "BAD_REQUEST"
    assert body["message"].startswith(f"{MODEL_RAISED} Error: ValueError: ")
    assert "stack_trace" not in body


def test_empty_csv_is_a_bad_request(suite: Suite, http: httpx.Client) -> None:
    """test_scoring_server_responds_to_invalid_csv_input_with_stacktrace_and_error_code

    MLflow's error carries a `stack_trace`; the gateway's has the same status, code and
    message, without it (README row: input that cannot be parsed).
    """
    relies_on(README_ROW_UNPARSABLE)
    body = error_of(score(http, suite, "knn", "", CSV), 400)
    assert body["error_code"] == "BAD_REQUEST"
    assert body["message"].startswith("Failed to parse input as a Pandas DataFrame.")
    assert "stack_trace" not in body


# --- dataframes and TF-serving inputs ---------------------------------------------------------


@pytest.mark.parametrize("content_type", [JSON, f"{JSON}; charset=UTF-8"])
def test_dataframe_records(suite: Suite, http: httpx.Client, content_type: str) -> None:
    """test_scoring_server_successfully_evaluates_correct_dataframes_with_pandas_records_orientation"""
    document = {"dataframe_records": knn_frame(suite).to_dict(orient="records")}
    response = score(http, suite, "knn", json.dumps(document), content_type)
    assert predictions(response) == knn_expected(suite)


@pytest.mark.parametrize("content_type", [f"{JSON}; charset=UTF-8", JSON])
def test_dataframe_split(suite: Suite, http: httpx.Client, content_type: str) -> None:
    """test_scoring_server_successfully_evaluates_correct_dataframes_with_pandas_split_orientation"""
    document = {"dataframe_split": knn_frame(suite).to_dict(orient="split")}
    response = score(http, suite, "knn", json.dumps(document), content_type)
    assert predictions(response) == knn_expected(suite)


def test_unsupported_content_type_is_a_415(suite: Suite, http: httpx.Client) -> None:
    """test_scoring_server_responds_to_invalid_content_type_request_with_unsupported_content_type_code

    MLflow sends the 415's message as text/plain; the gateway sends the same message in its JSON
    error shape (README row: 415 bodies).
    """
    relies_on(README_ROW_415_BODIES)
    content = knn_frame(suite).to_json(orient="split")
    body = error_of(score(http, suite, "knn", content, "not_a_supported_content_type"), 415)
    assert body == {
        "error_code": "BAD_REQUEST",
        "message": "This predictor only supports the following content types: Types:"
        f" {[CSV, JSON, PARQUET]}. Got 'not_a_supported_content_type'.",
    }


def test_unrecognized_content_type_parameter_is_a_415(suite: Suite, http: httpx.Client) -> None:
    """test_scoring_server_responds_to_invalid_content_type_request_with_unrecognized_content_param

    (README row: 415 bodies, as above.)
    """
    relies_on(README_ROW_415_BODIES)
    content = knn_frame(suite).to_json(orient="split")
    body = error_of(score(http, suite, "knn", content, f"{JSON}; something=something"), 415)
    assert body["error_code"] == "BAD_REQUEST"
    assert body["message"].startswith("Unrecognized content type parameters: something. ")


def test_tf_serving_instances_for_sklearn(suite: Suite, http: httpx.Client) -> None:
    """test_scoring_server_successfully_evaluates_correct_tf_serving_sklearn"""
    document = {"instances": suite.models.knn_rows.tolist()}
    assert predictions(score(http, suite, "knn", json.dumps(document))) == knn_expected(suite)


def _tensor_rows() -> tuple[np.ndarray, np.ndarray, list[float]]:
    rows = np.arange(40, dtype=np.float64).reshape(10, 4) / 10
    a, b = rows[:, :2], rows[:, 2:]
    expected = (a @ np.array([1.0, 2.0]) + b @ np.array([3.0, 4.0])).tolist()
    return a, b, expected


def test_tf_serving_instances_for_tensors(suite: Suite, http: httpx.Client) -> None:
    """test_scoring_server_successfully_evaluates_correct_tf_serving_keras_instances"""
    a, b, expected = _tensor_rows()
    instances = [{"a": x.tolist(), "b": y.tolist()} for x, y in zip(a, b, strict=True)]
    response = score(http, suite, "tensors", json.dumps({"instances": instances}))
    assert predictions(response) == pytest.approx(expected)


def test_tf_serving_inputs_for_tensors(suite: Suite, http: httpx.Client) -> None:
    """test_scoring_server_successfully_evaluates_correct_tf_serving_keras_inputs"""
    a, b, expected = _tensor_rows()
    document = {"inputs": {"a": a.tolist(), "b": b.tolist()}}
    assert predictions(score(http, suite, "tensors", json.dumps(document))) == pytest.approx(
        expected
    )


# --- how JSON and CSV bodies become frames ----------------------------------------------------


def _random_columns(size: int) -> dict[str, list[Any]]:
    rng = random.Random(size)  # MLflow draws fresh values each run; fixed here, same shapes
    return {
        "col_m": [rng.randint(0, 1000) for _ in range(size)],
        "col_z": ["".join(rng.choices(string.ascii_letters, k=10)) for _ in range(size)],
        "col_a": [rng.randint(1, 10**10) for _ in range(size)],
    }


def test_records_reach_the_model_as_sent(suite: Suite, http: httpx.Client) -> None:
    """test_parse_json_input_records_oriented"""
    frame = pd.DataFrame(_random_columns(2))
    document = {"dataframe_records": frame.to_dict(orient="records")}
    echoed = pd.DataFrame(predictions(score(http, suite, "echo", json.dumps(document))))
    for column in frame:  # records may reorder columns: compared column by column
        assert echoed[column].tolist() == frame[column].tolist()


def test_split_reaches_the_model_as_sent(suite: Suite, http: httpx.Client) -> None:
    """test_parse_json_input_split_oriented"""
    frame = pd.DataFrame(_random_columns(200))
    document = {"dataframe_split": frame.to_dict(orient="split")}
    echoed = pd.DataFrame(predictions(score(http, suite, "echo", json.dumps(document))))
    pd.testing.assert_frame_equal(echoed, frame)


ZIP_CODES_RECORDS = """
  {
    "dataframe_records": [
      {"zip": "95120", "cost": 10.45, "score": 8},
      {"zip": "95128", "cost": 23.0, "score": 0},
      {"zip": "95128", "cost": 12.1, "score": 10}
    ]
  }
"""
ZIP_CODES_SPLIT = """
  {
    "dataframe_split": {
      "columns": ["zip", "cost", "count"],
      "index": [0, 1, 2],
      "data": [["95120", 10.45, -8], ["95128", 23.0, -1], ["95128", 12.1, 1000]]
    }
  }
"""


@pytest.mark.parametrize(
    ("content", "columns"),
    [(ZIP_CODES_RECORDS, {"zip", "cost", "score"}), (ZIP_CODES_SPLIT, {"zip", "cost", "count"})],
    ids=["records", "split"],
)
def test_string_digits_stay_strings(
    suite: Suite, http: httpx.Client, content: str, columns: set[str]
) -> None:
    """test_records_oriented_json_to_df, test_split_oriented_json_to_df: "95120" stays a string.

    MLflow asserts the dtypes {object, float64, int64}, as pandas 2 names them; pandas 3 (here)
    makes strings `str`. The dtypes the model sees must be those of MLflow's own parser, in this
    process, and the digits must not become numbers.
    """
    from mlflow.pyfunc import scoring_server

    data, _ = scoring_server._split_data_and_params(content)
    parsed = scoring_server.infer_and_parse_data(data)
    dtypes = dict(predictions(score(http, suite, "dtypes", content)))
    assert dtypes == {str(name): str(dtype) for name, dtype in parsed.dtypes.items()}
    assert set(dtypes) == columns
    assert not pd.api.types.is_numeric_dtype(parsed["zip"])
    assert {dtypes[name] for name in columns - {"zip"}} == {"float64", "int64"}


def _shuffled(frame: pd.DataFrame) -> pd.DataFrame:
    columns = list(frame.columns)
    random.Random(0).shuffle(columns)
    return frame[columns]


# What MLflow's column types are in pandas once a signature is enforced. MLflow's test expects
# strings parsed from JSON to stay objects, as in pandas 2; pandas 3 (installed here) reads them
# as its `str` dtype, and MLflow's own server then answers `str` too: pandas' default it is.
# Strings read from CSV stay objects (the signature's dtype is handed to read_csv).
PANDAS_DTYPES = {
    "boolean": "bool",
    "integer": "int32",
    "long": "int64",
    "float": "float32",
    "double": "float64",
    "binary": "object",
    "datetime": "datetime64[ns]",
    "string": "object",
}
JSON_STRING_DTYPE = str(pd.Series(["a"]).dtype)


def test_csv_is_parsed_with_the_signature(suite: Suite, http: httpx.Client) -> None:
    """test_parse_with_schema_csv"""
    frame = _shuffled(all_types_frame()[CSV_TYPES])
    dtypes = predictions(score(http, suite, "dtypes-csv-types", frame.to_csv(index=False), CSV))
    assert dtypes == [[name, PANDAS_DTYPES[name]] for name in CSV_TYPES]


def _numpy_json(document: Any) -> str:
    """JSON as MLflow's tests write it: bytes base64, timestamps ISO 8601 (NumpyEncoder)."""
    return json.dumps(document, cls=NumpyEncoder)


@pytest.mark.parametrize("field", ["dataframe_split", "dataframe_records", "inputs"])
def test_every_column_type_reaches_the_model_as_its_signature_says(
    suite: Suite, http: httpx.Client, field: str
) -> None:
    """test_serving_model_with_schema, and the first half of test_parse_with_schema

    The columns are sent shuffled (split and inputs) or in order (records); the model sees the
    signature's order and types (strings: see PANDAS_DTYPES).
    """
    frame = all_types_frame()
    if field == "dataframe_split":
        data: Any = _shuffled(frame).to_dict(orient="split")
    elif field == "dataframe_records":
        data = frame.to_dict(orient="records")
    else:
        data = _shuffled(frame).to_dict(orient="list")
    response = score(http, suite, "dtypes-all-types", _numpy_json({field: data}))
    expected = {**PANDAS_DTYPES, "string": JSON_STRING_DTYPE}
    assert predictions(response) == [[name, expected[name]] for name in ALL_TYPES]


FORCED_TYPES = """
{
  "dataframe_split": {
    "columns": ["bad_integer", "bad_float", "bad_string", "bad_boolean"],
    "data": [
      [9007199254740991.0, 1.1,                1, 1.5],
      [9007199254740992.0, 9007199254740992.0, 2, 0],
      [9007199254740994.0, 3.3,                3, "some arbitrary string"]
    ]
  }
}
"""


def test_values_are_forced_into_the_signatures_types(suite: Suite, http: httpx.Client) -> None:
    """The second half of test_parse_with_schema: pandas forces values into the signature's
    types, overflow and precision loss included, and the model gets them so."""
    echoed = pd.DataFrame(predictions(score(http, suite, "echo-forced-types", FORCED_TYPES)))
    # int32 cannot hold them: each wraps to int32's minimum
    assert echoed["bad_integer"].tolist() == [-2147483648] * 3
    # float32: 1.1 and 3.3 come back as float32 rounds them
    assert echoed["bad_float"].tolist() == [
        float(np.float32(x)) for x in (1.1, 9007199254740992.0, 3.3)
    ]
    assert echoed["bad_string"].tolist() == [1, 2, 3]  # ints, kept as they came
    assert echoed["bad_boolean"].tolist() == [True, False, True]  # zero is False, the rest True


def test_strings_that_look_like_paths_or_urls(suite: Suite, http: httpx.Client) -> None:
    """test_parse_json_input_including_path"""
    frame = pd.DataFrame(
        {
            "url": ["http://foo.com", "https://bar.com"],
            "bad_protocol": ["aaa://bbb", "address:/path"],
        }
    )
    echoed = predictions(score(http, suite, "echo", frame))
    assert echoed == frame.to_dict(orient="records")


# --- params -----------------------------------------------------------------------------------


def test_params_by_the_param_schema(suite: Suite, http: httpx.Client) -> None:
    """test_serving_model_with_param_schema"""
    document: dict[str, Any] = {"dataframe_split": knn_frame(suite).to_dict(orient="split")}
    content_type = f"{JSON}; charset=UTF-8"

    # no params: the schema's defaults
    response = score(http, suite, "knn-params", json.dumps(document), content_type)
    assert predictions(response) == knn_expected(suite)

    # a value that is not of the param's type
    wrong = {**document, "params": {"param1": "invalid_value1"}}
    body = error_of(score(http, suite, "knn-params", json.dumps(wrong), content_type), 400)
    assert (
        " Failed to convert value `invalid_value1` from type `<class 'str'>` to"
        " `DataType.datetime`" in body["message"]
    )

    # a param the schema does not declare is ignored
    unknown = {**document, "params": {"invalid_param": "value"}}
    response = score(http, suite, "knn-params", json.dumps(unknown), content_type)
    assert predictions(response) == knn_expected(suite)


# --- how predictions are written ----------------------------------------------------------------


@pytest.mark.parametrize("endpoint", ["string-array", "object-array"])
def test_numpy_string_arrays_are_written_as_lists(
    suite: Suite, http: httpx.Client, endpoint: str
) -> None:
    """test_get_jsonnable_obj: arrays of str dtype and of object dtype."""
    assert predictions(score(http, suite, endpoint, knn_frame(suite))) == STRING_ROWS


def test_pydantic_predictions_are_written_as_their_dump(suite: Suite, http: httpx.Client) -> None:
    """test_numpy_encoder_for_pydantic"""
    response = score(http, suite, "pydantic", knn_frame(suite))
    assert predictions(response) == CHAT_TURNS.model_dump()


# --- MLflow's own client ----------------------------------------------------------------------


def test_mlflows_scoring_server_client(suite: Suite) -> None:
    """test_scoring_server_client (the client half: the server is the gateway)."""
    from mlflow.pyfunc.scoring_server.client import ScoringServerClient

    address = urlsplit(suite.url)
    client = ScoringServerClient(host=address.hostname, port=address.port)
    client.wait_server_ready(timeout=30)
    result = client.invoke(knn_frame(suite)).get_predictions().to_numpy()[:, 0]
    np.testing.assert_allclose(result, knn_expected(suite), rtol=1e-5)
    assert client.get_version() == VERSION


# --- LLM-shaped bodies on custom pyfuncs --------------------------------------------------------

HELLO = [{"role": "user", "content": "hello!"}]


@pytest.mark.parametrize(
    ("endpoint", "model_input", "params"),
    [
        # no signature: the whole body is the model's input
        ("chat", {"messages": HELLO, "max_tokens": 20, "temperature": 0.5}, {}),
        # params in the param schema go to params, with the schema's defaults for the rest
        (
            "chat-params",
            {"messages": HELLO},
            {"temperature": 0.5, "max_tokens": 20, "top_p": 0.9},
        ),
        # fields neither schema declares are dropped
        ("chat-one-param", {"messages": HELLO}, {"temperature": 0.5}),
        # fields the input schema declares stay in the input
        (
            "chat-params-as-inputs",
            {"messages": HELLO, "temperature": 0.5, "max_tokens": 20},
            {},
        ),
    ],
)
def test_llm_chat_bodies(
    suite: Suite, http: httpx.Client, endpoint: str, model_input: Any, params: Any
) -> None:
    """test_scoring_server_allows_payloads_with_llm_chat_keys_for_pyfunc"""
    document = {"messages": HELLO, "temperature": 0.5, "max_tokens": 20}
    response = score(http, suite, endpoint, json.dumps(document))
    assert response.status_code == 200, response.text
    answer = response.json()  # unwrapped: no "predictions"
    assert answer["choices"][0]["message"]["content"] == "hello!"
    assert answer["model_input"] == model_input
    assert answer["params"] == params


@pytest.mark.parametrize(
    ("endpoint", "model_input", "params"),
    [
        ("completions", {"prompt": "hello!", "max_tokens": 20, "temperature": 0.5}, {}),
        (
            "completions-params",
            {"prompt": "hello!"},
            {"temperature": 0.5, "max_tokens": 20, "top_p": 0.9},
        ),
    ],
)
def test_llm_completions_bodies(
    suite: Suite, http: httpx.Client, endpoint: str, model_input: Any, params: Any
) -> None:
    """test_scoring_server_allows_payloads_with_llm_completions_keys_for_pyfunc"""
    document = {"prompt": "hello!", "temperature": 0.5, "max_tokens": 20}
    response = score(http, suite, endpoint, json.dumps(document))
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["choices"][0]["text"] == "hello!"
    assert answer["model_input"] == model_input
    assert answer["params"] == params


@pytest.mark.parametrize(
    ("endpoint", "model_input"),
    [
        ("embeddings", {"input": "hello!", "random": "test"}),
        ("embeddings-input", {"input": "hello!"}),
    ],
)
def test_llm_embeddings_bodies(
    suite: Suite, http: httpx.Client, endpoint: str, model_input: Any
) -> None:
    """test_scoring_server_allows_payloads_with_llm_embeddings_keys_for_pyfunc"""
    response = score(http, suite, endpoint, json.dumps({"input": "hello!", "random": "test"}))
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["data"][0]["embedding"] == [0.1, 0.2, 0.3]
    assert answer["model_input"] == model_input
    assert answer["params"] == {}


def test_messages_for_a_wrapped_pyfunc(suite: Suite, http: httpx.Client) -> None:
    """test_scoring_server_allows_payloads_with_messages_for_pyfunc_wrapped"""
    document = {"messages": [{"role": "user", "content": "[2,2,2,2]"}], "max_tokens": 20}
    response = score(http, suite, "wrapped", json.dumps(document))
    assert response.status_code == 200, response.text
    [label] = response.json()  # unwrapped: the wrapped classifier's one answer
    assert label in (0, 1, 2)


@pytest.mark.parametrize(
    ("endpoint", "model_input", "params"),
    [
        # no param schema: everything is data, nothing is dropped
        ("chat", {"messages": ["test"], "max_tokens": 20, "random": "test"}, {}),
        # what the param schema declares is params, the rest data
        ("chat-max-tokens-param", {"messages": ["test"], "random": "test"}, {"max_tokens": 20}),
    ],
)
def test_llm_body_split_into_data_and_params(
    suite: Suite, http: httpx.Client, endpoint: str, model_input: Any, params: Any
) -> None:
    """test_split_data_and_params_for_llm_input"""
    document = {"messages": ["test"], "max_tokens": 20, "random": "test"}
    response = score(http, suite, endpoint, json.dumps(document))
    assert response.status_code == 200, response.text
    assert (response.json()["model_input"], response.json()["params"]) == (model_input, params)


# --- the rest of the protocol (not in MLflow's file) --------------------------------------------


@pytest.mark.parametrize("path", ["/ping", "/health"])
def test_health_checks(suite: Suite, http: httpx.Client, path: str) -> None:
    response = http.get(f"{suite.url}{path}")
    assert (response.status_code, response.text) == (200, "\n")


def test_version_is_the_bare_mlflow_version(suite: Suite, http: httpx.Client) -> None:
    """MLflow labels it application/json; the gateway sends it as text (README row: GET
    /version)."""
    relies_on(README_ROW_VERSION)
    response = http.get(f"{suite.url}/version")
    assert (response.status_code, response.text) == (200, VERSION)
    assert response.headers["content-type"].startswith("text/plain")


def test_parquet_body(suite: Suite, http: httpx.Client) -> None:
    frame = pd.DataFrame(suite.models.knn_rows, columns=["a", "b"])
    response = score(http, suite, "knn", frame.to_parquet(), PARQUET)
    assert predictions(response) == knn_expected(suite)


def test_nan_in_predictions_is_null(suite: Suite, http: httpx.Client) -> None:
    """MLflow writes bare NaN, which is not JSON (README row: NaN / Infinity in predictions)."""
    relies_on(README_ROW_NAN)
    response = score(http, suite, "nan", json.dumps({"inputs": {"x": [1.0]}}))
    assert response.status_code == 200
    strict = json.loads(response.text, parse_constant=_no_constants)
    assert strict == {"predictions": [{"value": v} for v in (1.5, None, None, None)]}


def _no_constants(name: str) -> Any:
    raise AssertionError(f"{name} is not JSON")


def test_missing_content_type_is_a_415(suite: Suite, http: httpx.Client) -> None:
    """MLflow fails with a 500 (README row: no Content-Type header)."""
    relies_on(README_ROW_NO_CONTENT_TYPE)
    content = json.dumps({"dataframe_split": knn_frame(suite).to_dict(orient="split")})
    body = error_of(score(http, suite, "knn", content, None), 415)
    assert body["message"].startswith("Missing Content-Type header.")


def test_charset_other_than_utf8_is_a_415(suite: Suite, http: httpx.Client) -> None:
    """(README row: 415 bodies.)"""
    relies_on(README_ROW_415_BODIES)
    content = json.dumps({"dataframe_split": knn_frame(suite).to_dict(orient="split")})
    body = error_of(score(http, suite, "knn", content, f"{JSON}; charset=latin-1"), 415)
    assert body == {
        "error_code": "BAD_REQUEST",
        "message": "The scoring server only supports UTF-8",
    }


def test_body_over_the_limit_is_a_413(suite: Suite, http: httpx.Client) -> None:
    """MLflow reads any body whole (README row: body larger than allowed)."""
    relies_on(README_ROW_BODY_LIMIT)
    rows = np.tile(suite.models.knn_rows, (200, 1))
    content = json.dumps({"instances": rows.tolist()})
    assert len(content) > MAX_BODY_BYTES
    assert score(http, suite, "knn", content).status_code == 413
