"""Trains the demo model (scikit-learn's iris data, shipped with the package) and saves it with
MLflow, with a signature and an input example, under `demo/models/iris` (git-ignored)."""

from __future__ import annotations

from pathlib import Path

DEMO_DIR = Path(__file__).resolve().parents[2] / "demo" / "models" / "iris"


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
