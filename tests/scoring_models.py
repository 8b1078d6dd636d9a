"""The models of MLflow's own scoring-server suite, ported in tests/test_mlflow_scoring_suite.py.

Saved like the rest of the test models (`tests/models.py`): pickled by value, with the same pip
requirements, so the gateway loads them without this package on its path.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pydantic
from mlflow.models import ModelSignature
from mlflow.pyfunc.model import PythonModel
from mlflow.types import ColSpec, DataType, ParamSchema, ParamSpec, Schema, TensorSpec
from mlflow.types.schema import Array, Object, Property

from tests.models import PIP_REQUIREMENTS, quiet, save_python_model


class FrameDtypes(PythonModel):
    """Answers each column of its input with its pandas dtype, as `[[name, dtype], ...]`."""

    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> Any:
        return [[str(name), str(dtype)] for name, dtype in model_input.dtypes.items()]


class FrameEcho(PythonModel):
    """Answers its input frame unchanged."""

    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> Any:
        return model_input


class Constant(PythonModel):
    """Answers `value`, whatever it is given: shows how each kind of prediction is written."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> Any:
        return self.value


class TwoTensors(PythonModel):
    """Two named float tensors `a` and `b` of shape (-1, 2) in, one score per row out.

    It stands in for the two-input Keras model of MLflow's suite (TensorFlow is not installed).
    """

    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> Any:
        tensors: Any = model_input  # a dict of arrays, by the tensor signature
        return tensors["a"] @ np.array([1.0, 2.0]) + tensors["b"] @ np.array([3.0, 4.0])


class EchoLLM(PythonModel):
    """An LLM-shaped answer for `kind` (chat, completions or embeddings) that also echoes the
    model input and the params it was given, so a test sees how the server split the body."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> Any:
        data: Any = model_input
        if isinstance(data, pd.DataFrame):  # a signature made MLflow build a frame of the body
            data = data.to_dict(orient="records")[0]
        echo = {"model_input": data, "params": params}
        if self.kind == "chat":
            text = " ".join(m["content"] if isinstance(m, dict) else m for m in data["messages"])
            message = {"role": "assistant", "content": text}
            return {"choices": [{"index": 0, "message": message, "finish_reason": "stop"}], **echo}
        if self.kind == "completions":
            choice = {"index": 0, "text": data["prompt"], "finish_reason": "stop"}
            return {"choices": [choice], **echo}
        return {"data": [{"index": 0, "embedding": [0.1, 0.2, 0.3]}], **echo}


class WrappedModel(PythonModel):
    """A pyfunc wrapping another MLflow model (an artifact) that reads a number list from the
    first chat message; its `predict` takes no params."""

    def load_context(self, context: Any) -> None:
        self.model = mlflow.pyfunc.load_model(context.artifacts["model_path"])

    # no `params` on purpose, as in MLflow's test: the server must not pass any
    def predict(self, context: Any, model_input: pd.DataFrame) -> Any:  # type: ignore[override]
        data: Any = model_input
        return self.model.predict([json.loads(data["messages"][0]["content"])])


class ChatTurn(pydantic.BaseModel):
    role: str
    content: str


class ChatTurns(pydantic.BaseModel):
    messages: list[ChatTurn]


CHAT_TURNS = ChatTurns(
    messages=[ChatTurn(role="user", content="hello!"), ChatTurn(role="assistant", content="hi!")]
)
STRING_ROWS = [["a", "b", "c"], ["e", "f", "g"]]

# The all-types frame of MLflow's suite: one column per MLflow column type, named after it.
ALL_TYPES = ["boolean", "integer", "long", "float", "double", "binary", "datetime", "string"]
CSV_TYPES = ["boolean", "integer", "long", "float", "double", "string"]


def all_types_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "boolean": [True, False, True],
            "integer": np.array([1, 2, 3], np.int32),
            "long": np.array([1, 2, 3], np.int64),
            "float": np.array([math.pi, 2 * math.pi, 3 * math.pi], np.float32),
            "double": [math.pi, 2 * math.pi, 3 * math.pi],
            "binary": [bytearray([1, 2, 3]), bytearray([4, 5, 6]), bytearray([7, 8, 9])],
            "datetime": [
                np.datetime64("2021-01-01 00:00:00"),
                np.datetime64("2021-02-02 00:00:00"),
                np.datetime64("2021-03-03 12:00:00"),
            ],
            "string": pd.Series(["a", "b", "c"], dtype=DataType.string.to_pandas()),
        }
    )


def _llm_signatures() -> dict[str, ModelSignature | None]:
    chat = Schema(
        [
            ColSpec(
                Array(Object([Property("role", "string"), Property("content", "string")])),
                "messages",
            )
        ]
    )
    sampling = [ParamSpec("temperature", "double", 0.5), ParamSpec("max_tokens", "integer", 20)]
    top_p = ParamSpec("top_p", "double", 0.9)
    return {
        "chat": None,
        "chat-params": ModelSignature(chat, params=ParamSchema([*sampling, top_p])),
        "chat-one-param": ModelSignature(chat, params=ParamSchema(sampling[:1])),
        "chat-params-as-inputs": ModelSignature(
            Schema(
                [
                    *chat.inputs,
                    ColSpec("long", "max_tokens", required=False),
                    ColSpec("double", "temperature", required=False),
                ]
            )
        ),
        "chat-max-tokens-param": ModelSignature(None, params=ParamSchema([sampling[1]])),
        "completions": None,
        "completions-params": ModelSignature(
            Schema([ColSpec("string", "prompt")]), params=ParamSchema([*sampling, top_p])
        ),
        "embeddings": None,
        "embeddings-input": ModelSignature(Schema([ColSpec("string", "input")])),
    }


@dataclass(frozen=True)
class ScoringSuiteModels:
    """The models of tests/test_mlflow_scoring_suite.py: endpoint name -> model folder, and the
    k-nearest-neighbours classifier most cases score, with the rows it is asked about."""

    __test__ = False

    paths: dict[str, Path]
    knn: Any  # sklearn.neighbors.KNeighborsClassifier
    knn_rows: np.ndarray  # iris, first two features


def build_scoring_suite_models(dest: Path) -> ScoringSuiteModels:
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier

    dest = Path(dest)
    features, target = load_iris(return_X_y=True)
    rows = features[:, :2]
    knn = KNeighborsClassifier().fit(rows, target)
    paths = {
        "knn": _save_sklearn(dest / "knn", knn, metadata={"metadata_key": "value"}),
        "knn-params": _save_sklearn(
            dest / "knn-params",
            knn,
            signature=ModelSignature(
                mlflow.models.infer_signature(rows).inputs,
                params=ParamSchema(
                    [ParamSpec("param1", DataType.datetime, np.datetime64("2023-07-01"))]
                ),
            ),
        ),
        "tensors": save_python_model(
            dest / "tensors",
            TwoTensors,
            signature=ModelSignature(
                Schema([TensorSpec(np.dtype(np.float64), (-1, 2), name) for name in ("a", "b")])
            ),
        ),
        "dtypes": save_python_model(dest / "dtypes", FrameDtypes),
        "echo": save_python_model(dest / "echo", FrameEcho),
        "dtypes-all-types": save_python_model(
            dest / "dtypes-all-types",
            FrameDtypes,
            signature=ModelSignature(Schema([ColSpec(name, name) for name in ALL_TYPES])),
        ),
        "dtypes-csv-types": save_python_model(
            dest / "dtypes-csv-types",
            FrameDtypes,
            signature=ModelSignature(Schema([ColSpec(name, name) for name in CSV_TYPES])),
        ),
        "echo-forced-types": save_python_model(
            dest / "echo-forced-types",
            FrameEcho,
            signature=ModelSignature(
                Schema(
                    [
                        ColSpec("integer", "bad_integer"),
                        ColSpec("float", "bad_float"),
                        ColSpec("string", "bad_string"),
                        ColSpec("boolean", "bad_boolean"),
                    ]
                )
            ),
        ),
        "string-array": save_python_model(dest / "string-array", Constant(np.array(STRING_ROWS))),
        "object-array": save_python_model(
            dest / "object-array", Constant(np.array(STRING_ROWS, dtype=object))
        ),
        "pydantic": save_python_model(dest / "pydantic", Constant(CHAT_TURNS)),
    }
    for name, signature in _llm_signatures().items():
        kind = name.split("-")[0]
        paths[name] = save_python_model(dest / name, EchoLLM(kind), signature=signature)
    # what `wrapped` wraps: a classifier on all four features, an artifact, not an endpoint
    wrapped = _save_sklearn(dest / "iris", LogisticRegression(max_iter=200).fit(features, target))
    paths["wrapped"] = save_python_model(
        dest / "wrapped", WrappedModel, artifacts={"model_path": str(wrapped)}
    )
    return ScoringSuiteModels(paths=paths, knn=knn, knn_rows=rows)


# What a fitted KNeighborsClassifier holds beyond skops' default trust list (MLflow saves
# scikit-learn models with skops, which refuses types it was not told to trust).
_KNN_TYPES = [
    "sklearn.metrics._dist_metrics.EuclideanDistance64",
    "sklearn.neighbors._kd_tree.KDTree",
]


def _save_sklearn(path: Path, model: Any, **kwargs: Any) -> Path:
    with quiet():
        mlflow.sklearn.save_model(
            model,
            path,
            pip_requirements=PIP_REQUIREMENTS,
            skops_trusted_types=_KNN_TYPES,
            **kwargs,
        )
    return path
