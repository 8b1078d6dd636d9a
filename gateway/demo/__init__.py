"""The demo `make serve` runs: the iris model it trains, the config it serves (`config/demo.yaml`)
and the keys that config accepts. `gateway.demo.launcher` starts it; `stand_in_llm` answers for
its LLM endpoints in place of vLLM.

The demo model is scikit-learn's iris data (shipped with the package), saved with MLflow, with a
signature and an input example, under `demo/models/iris` (git-ignored)."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]  # the source tree (`make setup` installs it editable)
DEMO_DIR = REPO / "demo" / "models" / "iris"
DEMO_CONFIG = REPO / "config" / "demo.yaml"

# Public, printed in the README and at start-up: never reuse them. config/demo.yaml holds their
# SHA-256 digests, as any config would.
DEMO_KEY = "gw-demo-key-do-not-use-in-production"
DEMO_ADMIN_KEY = "gw-demo-admin-key-do-not-use-in-production"

GATEWAY_PORT = 8080
STAND_IN_PORT = 8081
STAND_IN_PORT_ENV = "GATEWAY_DEMO_LLM_PORT"  # config/demo.yaml reads the stand-in's port from it
STATE_ENV = "GATEWAY_DEMO_STATE"  # where the demo's ledger, spool and tables go (default demo/)


def train_demo_model(target: Path = DEMO_DIR) -> Path:
    if (target / "MLmodel").is_file():
        return target
    import mlflow.sklearn
    from mlflow.models import infer_signature
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    features, labels = load_iris(return_X_y=True, as_frame=True)
    model = LogisticRegression(max_iter=1000).fit(features, labels)
    target.parent.mkdir(parents=True, exist_ok=True)
    mlflow.sklearn.save_model(
        model,
        str(target),
        signature=infer_signature(features, model.predict(features)),
        input_example=features.head(2),
    )
    return target
