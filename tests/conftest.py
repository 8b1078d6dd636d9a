"""Fixtures shared by the whole test suite.

The environment is fixed at import, before any test (or MLflow) reads it:
- LiteLLM reads its model cost map from the package, never from the network;
- MLflow tracks into a throwaway sqlite database, so no test writes ./mlruns or ./mlflow.db,
  whatever the developer's own MLFLOW_TRACKING_URI says. Subprocesses (the gateway,
  `mlflow models serve`) inherit it too.
"""

from __future__ import annotations

import os
import tempfile
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.models import TestModels

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

_MLFLOW_HOME = tempfile.TemporaryDirectory(prefix="gateway-tests-mlflow-")  # removed at exit
os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{_MLFLOW_HOME.name}/mlflow.db"


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> TestModels:
    """Real tiny MLflow models, and a sqlite registry with `iris` v1 (@champion) and v2.

    Built once per session (a few seconds); MLflow is imported only by sessions that use them.
    """
    from tests.models import build_all

    return build_all(tmp_path_factory.mktemp("models"))
