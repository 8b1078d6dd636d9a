"""MLflow's scoring protocol, byte for byte where it is right and better where it is wrong.

Parsing reuses MLflow's own scoring-server functions (pinned MLflow version), so that every input
format, schema coercion and error message is the one `mlflow models serve` gives. What differs,
on purpose (see README "Where we differ from mlflow models serve"):
- a missing Content-Type is a 415, not a 500; 415 bodies use the JSON error shape;
- NaN and Infinity in predictions are written as `null` (valid JSON), not bare `NaN`;
- a model that raises yields a 400 whose message names the exception, with no stack trace unless
  `server.expose_stack_traces` is set;
- JSON is decoded and encoded with orjson (stdlib `json` is used only when orjson refuses a body,
  so NaN literals, huge integers and MLflow's exact decode-error messages are all preserved).

Everything here runs in a predict thread except `check_content_type` and `ScoringRequest`, which
are cheap and run on the event loop.
"""

from __future__ import annotations

import contextlib
import re
import traceback
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from io import BytesIO, StringIO
from typing import Any

import orjson

from gateway.errors import BadRequest, GatewayError, ModelError, UnsupportedMediaType

CONTENT_TYPE_CSV = "text/csv"
CONTENT_TYPE_JSON = "application/json"
CONTENT_TYPE_PARQUET = "application/vnd.apache.parquet"
CONTENT_TYPES = [CONTENT_TYPE_CSV, CONTENT_TYPE_JSON, CONTENT_TYPE_PARQUET]
SPLIT, RECORDS = "dataframe_split", "dataframe_records"
_LONG_DIGIT_RUN = re.compile(rb"[0-9]{19}")

# MLflow's wording, kept so clients matching on it keep working.
_PROTOCOL_CHANGE_INFO = (
    "IMPORTANT: The MLflow Model scoring protocol has changed in MLflow version 2.0. If you are"
    " seeing this error, you are likely using an outdated scoring request format. To resolve the"
    " error, either update your request format or adjust your MLflow Model's requirements file to"
    " specify an older version of MLflow (for example, change the 'mlflow' requirement specifier"
    " to 'mlflow==1.30.0'). If you are making a request using the MLflow client"
    " (e.g. via `mlflow.pyfunc.spark_udf()`), upgrade your MLflow client to a version >= 2.0 in"
    " order to use the new request format. For more information about the updated MLflow"
    " Model scoring protocol in MLflow 2.0, see"
    " https://mlflow.org/docs/latest/models.html#deploy-mlflow-models."
)
_UNEXPECTED_MODEL_ERROR = (
    "Encountered an unexpected error while evaluating the model. Verify that the serialized"
    " input Dataframe is compatible with the model for inference."
)


def check_content_type(header: bytes | None) -> str:
    """The media type of a scoring request, or a 415 with MLflow's message."""
    if header is None:
        raise UnsupportedMediaType(
            f"Missing Content-Type header. This predictor only supports the following content"
            f" types: Types: {CONTENT_TYPES}."
        )
    content_type = header.decode("latin-1")
    mime, *pairs = (part.strip() for part in content_type.split(";"))
    parameters = {key: value for key, _, value in (pair.partition("=") for pair in pairs)}
    if parameters.get("charset", "utf-8").lower() != "utf-8":
        raise UnsupportedMediaType("The scoring server only supports UTF-8")
    if unexpected := set(parameters).difference({"charset"}):
        raise UnsupportedMediaType(
            f"Unrecognized content type parameters: {', '.join(unexpected)}. "
            f"{_PROTOCOL_CHANGE_INFO}"
        )
    if mime not in CONTENT_TYPES:
        raise UnsupportedMediaType(
            f"This predictor only supports the following content types: Types: {CONTENT_TYPES}."
            f" Got '{content_type}'."
        )
    return mime


@dataclass(slots=True)
class ScoringRequest:
    """One request to score: its media type, its body, and the JSON document when it has one."""

    mime: str
    body: bytes
    document: Any = None  # the decoded JSON body, when orjson could decode it
    parsed_rows: int | None = None  # rows of a CSV or Parquet body, known once parsed

    @classmethod
    def from_body(cls, mime: str, body: bytes) -> ScoringRequest:
        document = None
        # When orjson refuses a body, stdlib json decides later, with MLflow's exact wording.
        # orjson reads integers beyond 64 bits as floats, silently: such bodies go to stdlib
        # json too (a run of 19+ digits may also be a long fraction: then it is only slower).
        if mime == CONTENT_TYPE_JSON and _LONG_DIGIT_RUN.search(body) is None:
            with contextlib.suppress(orjson.JSONDecodeError):
                document = orjson.loads(body)
        return cls(mime, body, document)

    def batch_shape(self) -> Hashable | None:
        """Requests of one shape can be merged into one DataFrame; None: score it alone.

        Only flat tabular rows without nulls are merged, so that type inference and schema
        enforcement see the same values merged as alone.
        """
        doc = self.document
        if not isinstance(doc, dict) or len(doc) != 1:
            return None
        if SPLIT in doc:
            split = doc[SPLIT]
            if not isinstance(split, dict) or split.keys() != {"columns", "data"}:
                return None
            columns, rows = split["columns"], split["data"]
            if not (isinstance(columns, list) and isinstance(rows, list) and rows):
                return None
            if not all(isinstance(c, str) for c in columns):
                return None
            width = len(columns)
            if not all(isinstance(r, list) and len(r) == width and _flat(r) for r in rows):
                return None
            return (SPLIT, tuple(columns))
        if RECORDS in doc:
            records = doc[RECORDS]
            if not (isinstance(records, list) and records and isinstance(records[0], dict)):
                return None
            keys = tuple(records[0])
            for record in records:
                if not isinstance(record, dict) or tuple(record) != keys:
                    return None
                if not _flat(record.values()):
                    return None
            return (RECORDS, keys)
        return None

    def row_count(self) -> int:
        """Rows in the request: counted when its CSV or Parquet body was parsed, read off a
        JSON body's rows, 0 when neither says."""
        if self.parsed_rows is not None:
            return self.parsed_rows
        doc = self.document
        if not isinstance(doc, dict):
            return 0
        for key in (RECORDS, "instances", "inputs"):
            if isinstance(doc.get(key), list):
                return len(doc[key])
        split = doc.get(SPLIT)
        if isinstance(split, dict) and isinstance(split.get("data"), list):
            return len(split["data"])
        return 0

    def rows(self) -> list[Any]:
        """The rows of a batchable request (see `batch_shape`)."""
        doc = self.document
        rows: list[Any] = doc[SPLIT]["data"] if SPLIT in doc else doc[RECORDS]
        return rows


def _flat(values: Any) -> bool:
    return all(type(v) in (int, float, str, bool) for v in values)


# --- scoring (runs in a predict thread) -----------------------------------------------------------


def score(model: Any, request: ScoringRequest) -> bytes:
    """Parse, predict and serialise one request exactly as MLflow's scoring server does."""
    data, params, unwrapped = parse_input(model, request)
    return serialize_predictions(predict(model, data, params), unwrapped=unwrapped)


def score_batch(model: Any, requests: Sequence[ScoringRequest]) -> list[bytes | GatewayError]:
    """Score requests of one shape with one predict call; on any failure, score each alone.

    Alone, a bad request fails on its own and the others get exactly their unbatched answer.
    """
    if len(requests) > 1:
        try:
            return _score_merged(model, requests)
        except Exception:
            pass
    return [_score_or_error(model, request) for request in requests]


def _score_or_error(model: Any, request: ScoringRequest) -> bytes | GatewayError:
    try:
        return score(model, request)
    except GatewayError as error:
        return error


def _score_merged(model: Any, requests: Sequence[ScoringRequest]) -> list[bytes | GatewayError]:
    from mlflow.pyfunc.scoring_server import _parse_json_data

    first = requests[0].document
    counts = [len(request.rows()) for request in requests]
    rows = [row for request in requests for row in request.rows()]
    merged: dict[str, Any]
    if SPLIT in first:
        merged = {SPLIT: {"columns": first[SPLIT]["columns"], "data": rows}}
    else:
        merged = {RECORDS: rows}
    metadata = model.metadata
    data = _parse_json_data(merged, metadata, metadata.get_input_schema()).data
    raw = model.predict(data, params=None)
    parts = _split_rows(raw, counts)
    return [serialize_predictions(part, unwrapped=False) for part in parts]


def _split_rows(raw: Any, counts: list[int]) -> list[Any]:
    import numpy as np
    import pandas as pd

    total = sum(counts)
    if isinstance(raw, (pd.DataFrame, pd.Series)):
        take = raw.iloc.__getitem__
    elif isinstance(raw, (np.ndarray, list)):
        take = raw.__getitem__
    else:
        raise TypeError(f"cannot split predictions of type {type(raw).__name__} by row")
    if len(raw) != total:
        raise ValueError("the model did not return one prediction per input row")
    parts, start = [], 0
    for count in counts:
        parts.append(take(slice(start, start + count)))
        start += count
    return parts


def parse_input(model: Any, request: ScoringRequest) -> tuple[Any, dict[str, Any] | None, bool]:
    """MLflow's input parsing; returns (data, params, whether the output is unwrapped)."""
    from mlflow.exceptions import MlflowException
    from mlflow.pyfunc import scoring_server as mlflow_server
    from mlflow.utils.proto_json_utils import MlflowInvalidInputException

    metadata = model.metadata
    schema = metadata.get_input_schema()
    try:
        if request.mime == CONTENT_TYPE_CSV:
            try:
                text = request.body.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise MlflowInvalidInputException(
                    f"Ensure that input is a valid UTF-8 encoded string. Error: '{exc!r}'"
                ) from exc
            frame = mlflow_server.parse_csv_input(StringIO(text), schema=schema)
            request.parsed_rows = len(frame)
            return frame, None, False
        if request.mime == CONTENT_TYPE_PARQUET:
            frame = mlflow_server.parse_parquet_input(BytesIO(request.body))
            request.parsed_rows = len(frame)
            return frame, None, False
        document = request.document
        if not isinstance(document, dict):
            # orjson refused it or it is not an object: MLflow's decoder has the last word.
            document = mlflow_server._decode_json_input(request.body)
        else:
            document = dict(document)  # MLflow pops `params` from what it is given
        parsed = mlflow_server._parse_json_data(document, metadata, schema)
        return parsed.data, parsed.params, parsed.is_unified_llm_input
    except MlflowException as exc:
        raise _model_error(exc) from exc
    except GatewayError:
        raise
    except Exception as exc:  # MLflow would answer 500 here; the input is what is wrong
        raise BadRequest(f"Failed to parse the input: {type(exc).__name__}: {exc}") from exc


def predict(model: Any, data: Any, params: dict[str, Any] | None) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return model.predict(data, params=params)
    except MlflowException as exc:
        error = _model_error(exc)
        error.message = f"Failed to predict data '{data}'. \nError: {exc.message}"
        raise error from exc
    except Exception as exc:
        from mlflow.protos.databricks_pb2 import BAD_REQUEST

        # MLflow's own exception, so status, code, sqlstate and error_class are MLflow's.
        error = _model_error(MlflowException(_UNEXPECTED_MODEL_ERROR, error_code=BAD_REQUEST))
        error.message = f"{_UNEXPECTED_MODEL_ERROR} Error: {type(exc).__name__}: {exc}"
        error.stack_trace = traceback.format_exc()
        raise error from exc


def serialize_predictions(raw: Any, *, unwrapped: bool) -> bytes:
    from mlflow.utils.proto_json_utils import _get_jsonable_obj

    predictions = _get_jsonable_obj(raw, pandas_orient="records")
    try:
        return orjson.dumps(
            predictions if unwrapped else {"predictions": predictions},
            default=_encode_other,
            option=orjson.OPT_NON_STR_KEYS,
        )
    except TypeError as exc:
        raise ModelError(
            f"The model returned predictions that cannot be written as JSON: {exc}",
            status=500,
            error_code="INTERNAL_ERROR",
        ) from exc


def _encode_other(value: Any) -> Any:
    """What orjson cannot write natively, written as MLflow's NumpyEncoder writes it."""
    from mlflow.utils.proto_json_utils import NumpyEncoder

    converted, ok = NumpyEncoder().try_convert(value)
    if not ok:
        raise TypeError(f"Type is not JSON serializable: {type(value).__name__}")
    return converted


def _model_error(exc: Any) -> ModelError:
    details = {
        name: value
        for name in ("sqlstate", "error_class")
        if isinstance(value := getattr(exc, name, None), str)
    }
    return ModelError(
        exc.message,
        status=exc.get_http_status_code(),
        error_code=exc.error_code,
        stack_trace=exc.json_kwargs.get("stack_trace"),
        details=details,
    )
