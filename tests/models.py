"""Real, tiny MLflow models for tests: trained and saved in a second or two each.

Every `save_*` function writes one model folder under `dest` and returns its path. The custom
`PythonModel`s below are pickled *by value* (see `_pickled_by_value`), so a process that loads
them (the gateway, `mlflow models serve`) does not need this test package on its import path.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.pyfunc.model import ChatModel, PythonModel
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema
from mlflow.types.llm import ChatChoice, ChatCompletionResponse, ChatMessage, ChatParams

# Saving a model normally makes MLflow infer its pip requirements by loading it in a
# subprocess (seconds per model); these tests never build an environment from them.
PIP_REQUIREMENTS = ["mlflow", "scikit-learn", "pandas"]

# --- what requests to the classifier look like -----------------------------------------------

IRIS_COLUMNS = ["sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"]
# One flower, scored 0 (setosa) by the classifier.
IRIS_ONE_ROW: dict[str, Any] = {
    "dataframe_split": {"columns": IRIS_COLUMNS, "data": [[5.1, 3.5, 1.4, 0.2]]}
}

# --- what the test session gets ---------------------------------------------------------------


@dataclass(frozen=True)
class TestModels:
    """The models of one test session (built once by the `models` fixture in conftest.py)."""

    __test__ = False  # not a test class, whatever pytest thinks of its name

    classifier: Path
    regressor: Path
    typed: Path
    chat: Path
    failing: Path
    nan: Path
    registry_uri: str


def build_all(dest: Path) -> TestModels:
    dest = Path(dest)
    return TestModels(
        classifier=save_classifier(dest),
        regressor=save_regressor(dest),
        typed=save_typed_model(dest),
        chat=save_chat_model(dest),
        failing=save_failing_model(dest),
        nan=save_nan_model(dest),
        registry_uri=register_versions(dest / "registry"),
    )


# --- custom pyfunc models ---------------------------------------------------------------------


class TypedModel(PythonModel):
    """Echoes every column back, derived: the params visibly change the output."""

    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> pd.DataFrame:
        params = params or {}
        multiplier = float(params.get("multiplier", 1.0))
        label = str(params.get("label", "x"))
        frame = model_input
        return pd.DataFrame(
            {
                "label": [f"{label}:{s}" for s in frame["s"]],
                "total": (frame["i"] + frame["l"] + frame["f"] + frame["d"]) * multiplier,
                "not_b": ~frame["b"].astype(bool),
                "n_bytes": [len(b) for b in frame["bin"]],
                "bin": frame["bin"],
                "dt": frame["dt"],
                "year": frame["dt"].dt.year,
                "dtypes": [",".join(str(t) for t in frame.dtypes)] * len(frame),
            }
        )


class EchoChatModel(ChatModel):
    """Answers with the last user message, prefixed by `echo: `."""

    def predict(  # type: ignore[override]  # ChatModel narrows PythonModel.predict by design
        self, context: Any, messages: list[ChatMessage], params: ChatParams
    ) -> ChatCompletionResponse:
        last = next((m.content for m in reversed(messages) if m.role == "user"), "")
        return ChatCompletionResponse(
            choices=[
                ChatChoice(
                    index=0,
                    message=ChatMessage(role="assistant", content=f"echo: {last}"),
                    finish_reason="stop",
                )
            ],
            model="echo",
            # fixed, so that two servers answer byte-identical JSON
            id="chatcmpl-echo",
            created=0,
        )


class FailingModel(PythonModel):
    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> pd.DataFrame:
        raise ValueError("boom")


class NanModel(PythonModel):
    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> pd.DataFrame:
        return pd.DataFrame({"value": [1.5, math.nan, math.inf, -math.inf]})


# --- savers -----------------------------------------------------------------------------------


def save_classifier(dest: Path) -> Path:
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    features, target = load_iris(return_X_y=True, as_frame=True)
    model = LogisticRegression(max_iter=200).fit(features, target)
    path = Path(dest) / "classifier"
    with quiet():
        mlflow.sklearn.save_model(
            model,
            path,
            signature=mlflow.models.infer_signature(features, model.predict(features)),
            input_example=features.head(3),
            pip_requirements=PIP_REQUIREMENTS,
        )
    return path


def save_regressor(dest: Path) -> Path:
    from sklearn.datasets import load_diabetes
    from sklearn.linear_model import LinearRegression

    features, target = load_diabetes(return_X_y=True, as_frame=True)
    model = LinearRegression().fit(features, target)
    path = Path(dest) / "regressor"
    with quiet():
        mlflow.sklearn.save_model(
            model,
            path,
            signature=mlflow.models.infer_signature(features, model.predict(features)),
            input_example=features.head(3),
            pip_requirements=PIP_REQUIREMENTS,
        )
    return path


TYPED_COLUMNS = {
    "b": "boolean",
    "i": "integer",
    "l": "long",
    "f": "float",
    "d": "double",
    "s": "string",
    "bin": "binary",
    "dt": "datetime",
}


def typed_example() -> pd.DataFrame:
    """Two rows of the typed model's input, with the exact dtypes of its signature."""
    return pd.DataFrame(
        {
            "b": np.array([True, False]),
            "i": np.array([1, 2], dtype=np.int32),
            "l": np.array([10, 20], dtype=np.int64),
            "f": np.array([0.5, 1.5], dtype=np.float32),
            "d": np.array([0.25, 2.75], dtype=np.float64),
            "s": ["a", "b"],
            "bin": [b"\x00\x01", b"hello"],
            "dt": pd.to_datetime(["2024-01-02T03:04:05", "2025-06-07T08:09:10"]),
        }
    )


def save_typed_model(dest: Path) -> Path:
    signature = ModelSignature(
        inputs=Schema([ColSpec(type_, name) for name, type_ in TYPED_COLUMNS.items()]),
        params=ParamSchema(
            [ParamSpec("multiplier", "double", 1.0), ParamSpec("label", "string", "x")]
        ),
    )
    return save_python_model(
        dest / "typed", TypedModel, signature=signature, input_example=typed_example()
    )


def save_chat_model(dest: Path) -> Path:
    # A ChatModel's signature is fixed by MLflow (passing one is an error); the input example
    # is what MLflow runs once at save time to check that predict returns a response.
    return save_python_model(
        dest / "chat",
        EchoChatModel,
        input_example={"messages": [{"role": "user", "content": "hello"}]},
    )


ONE_DOUBLE_X = ModelSignature(inputs=Schema([ColSpec("double", "x")]))


def save_failing_model(dest: Path) -> Path:
    # No input_example: MLflow would run it at save time, and this model must fail.
    return save_python_model(dest / "failing", FailingModel, signature=ONE_DOUBLE_X)


def save_nan_model(dest: Path) -> Path:
    return save_python_model(
        dest / "nan",
        NanModel,
        signature=ONE_DOUBLE_X,
        input_example=pd.DataFrame({"x": [1.0, 2.0]}),
    )


def save_python_model(path: Path, model: type[PythonModel] | PythonModel, **kwargs: Any) -> Path:
    """Save `model`, or an instance of it (instantiated here: ChatModel's constructor warns).

    The `predict` methods above take `pd.DataFrame`: MLflow warns about a `predict` without type
    hints, and infers no signature from this one (the signatures are given explicitly). Models
    that are given something else (a dict, arrays) keep that annotation for the same reason.
    """
    path = Path(path)
    model_class = model if isinstance(model, type) else type(model)
    with quiet(), _pickled_by_value(model_class.__module__):
        mlflow.pyfunc.save_model(
            path,
            python_model=model() if isinstance(model, type) else model,
            pip_requirements=PIP_REQUIREMENTS,
            **kwargs,
        )
    return path


# --- a real model registry ----------------------------------------------------------------------


def register_versions(tracking_dir: Path) -> str:
    """A sqlite-backed registry holding `iris` v1 (alias `champion`) and v2; returns its URI.

    The runs and model artifacts live under `tracking_dir` too. MLflow's fluent API logs to a
    process-global tracking URI: it is pointed here for the duration and restored after.
    """
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    tracking_dir = Path(tracking_dir).resolve()
    tracking_dir.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{tracking_dir}/mlflow.db"
    features, target = load_iris(return_X_y=True, as_frame=True)
    versions = [
        LogisticRegression(max_iter=200).fit(features, target),
        # heavily regularised: on borderline flowers it answers differently from v1
        LogisticRegression(C=0.01, max_iter=200).fit(features, target),
    ]
    with quiet(), _tracking_uri(uri):
        client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
        experiment_id = client.create_experiment(
            "registry-tests", artifact_location=(tracking_dir / "artifacts").as_uri()
        )
        for model in versions:
            with mlflow.start_run(experiment_id=experiment_id):
                mlflow.sklearn.log_model(
                    model,
                    name="model",
                    registered_model_name="iris",
                    signature=mlflow.models.infer_signature(features, model.predict(features)),
                    input_example=features.head(2),
                    pip_requirements=PIP_REQUIREMENTS,
                )
        client.set_registered_model_alias("iris", "champion", "1")
    return uri


# --- helpers ------------------------------------------------------------------------------------


@contextlib.contextmanager
def _tracking_uri(uri: str) -> Iterator[None]:
    """Point MLflow's fluent API (tracking and registry) at `uri`, then put everything back.

    `mlflow.set_tracking_uri` also writes MLFLOW_TRACKING_URI into os.environ (for subprocesses)
    and `mlflow.set_registry_uri` would do the same with MLFLOW_REGISTRY_URI, with no way to unset
    it: both variables are restored exactly, and the registry follows through the variable only.
    """
    names = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    saved = {name: os.environ.get(name) for name in names}
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    os.environ["MLFLOW_REGISTRY_URI"] = uri
    try:
        if mlflow.get_registry_uri() != uri:
            raise RuntimeError(
                "mlflow.set_registry_uri() was called in this process: cannot point the"
                " registry at a test database without clobbering it"
            )
        yield
    finally:
        mlflow.set_tracking_uri(previous)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def _pickled_by_value(module_name: str) -> Iterator[None]:
    """Pickle the classes of `module_name` (this one, tests.scoring_models) by value, so loading
    them never imports this test package."""
    import cloudpickle

    module = sys.modules[module_name]
    cloudpickle.register_pickle_by_value(module)
    try:
        yield
    finally:
        cloudpickle.unregister_pickle_by_value(module)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """MLflow's save-time warnings (pip inference, pickle advice, ...) are not the tests' business.

    They come from MLflow's dependencies as much as from MLflow (which pyproject.toml already
    ignores), and pytest turns every warning into an error.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
