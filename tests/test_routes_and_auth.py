"""Auth, routing, limits and health through real HTTP against a real gateway process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import mlflow
import pytest
from mlflow.pyfunc.scoring_server.client import ScoringServerClient

from gateway import __version__
from gateway.auth.keys import key_digest
from tests.gateway_process import GatewayProcess, run_gateway, write_config
from tests.models import IRIS_ONE_ROW, TestModels

ANALYST_KEY = "gw-analyst-test-key-0123456789abcdef"
ADMIN_KEY = "gw-admin-test-key-0123456789abcdef"
IRIS_ROW = IRIS_ONE_ROW["dataframe_split"]
SCORE = IRIS_ONE_ROW


@pytest.fixture(scope="module")
def gateway(
    models: TestModels, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    workdir = tmp_path_factory.mktemp("routes")
    config = write_config(
        workdir,
        f"""
server: {{max_body_bytes: 4096}}
auth:
  keys:
    - {{id: analyst, sha256: "{key_digest(ANALYST_KEY)}", endpoints: ["iris*"]}}
    - {{id: admin, key: "${{ADMIN_KEY}}", roles: [user, admin]}}
endpoints:
  - name: iris
    type: custom
    default: true
    served_models: [{{model: "{models.classifier}", traffic: 100}}]
  - name: diabetes
    type: custom
    served_models: [{{model: "{models.regressor}", traffic: 100}}]
""",
    )
    with run_gateway(config, workdir=workdir, env={"ADMIN_KEY": ADMIN_KEY}) as process:
        yield process


def post(
    gateway: GatewayProcess, path: str, key: str | None = ANALYST_KEY, **kwargs: object
) -> httpx.Response:
    headers = {"content-type": "application/json", **kwargs.pop("headers", {})}  # type: ignore[dict-item]
    if key is not None:
        headers["authorization"] = f"Bearer {key}"
    return httpx.post(f"{gateway.url}{path}", headers=headers, **kwargs)  # type: ignore[arg-type]


def test_a_valid_bearer_key_scores(gateway: GatewayProcess, models: TestModels) -> None:
    response = post(gateway, "/serving-endpoints/iris/invocations", json=SCORE)
    assert response.status_code == 200, response.text
    assert response.json() == {"predictions": [0]}
    assert response.headers["x-served-model"] == str(models.classifier)
    assert len(response.headers["x-request-id"]) == 24


def test_x_api_key_is_accepted_too(gateway: GatewayProcess) -> None:
    response = post(
        gateway, "/invocations", key=None, headers={"x-api-key": ANALYST_KEY}, json=SCORE
    )
    assert response.status_code == 200, response.text


def test_a_client_request_id_is_echoed(gateway: GatewayProcess) -> None:
    response = post(gateway, "/invocations", headers={"x-request-id": "trace-42"}, json=SCORE)
    assert response.headers["x-request-id"] == "trace-42"


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({}, "Missing API key"),
        ({"authorization": "Bearer gw-not-a-key"}, "Invalid API key."),
        ({"authorization": "Basic Zm9vOmJhcg=="}, "Missing API key"),
        ({"x-api-key": "gw-not-a-key"}, "Invalid API key."),
    ],
)
def test_missing_or_unknown_keys_get_401(
    gateway: GatewayProcess, headers: dict[str, str], message: str
) -> None:
    response = post(gateway, "/invocations", key=None, headers=headers, json=SCORE)
    assert response.status_code == 401
    body = response.json()
    assert body["error_code"] == "UNAUTHENTICATED"
    assert body["message"].startswith(message)


def test_a_key_outside_its_endpoint_globs_gets_403(gateway: GatewayProcess) -> None:
    response = post(gateway, "/serving-endpoints/diabetes/invocations", json=SCORE)
    assert response.status_code == 403
    assert response.json() == {
        "error_code": "PERMISSION_DENIED",
        "message": "Key 'analyst' is not allowed to call endpoint 'diabetes'.",
    }


def test_a_key_from_the_environment_works(gateway: GatewayProcess) -> None:
    row = {"dataframe_records": [{f"f{i}": 0.01 for i in range(10)}]}
    response = post(gateway, "/serving-endpoints/diabetes/invocations", key=ADMIN_KEY, json=row)
    assert response.status_code in (200, 400), response.text  # reached the model: auth passed


def test_an_unknown_endpoint_gets_404(gateway: GatewayProcess) -> None:
    response = post(gateway, "/serving-endpoints/nope/invocations", json=SCORE)
    assert response.status_code == 404
    assert response.json()["error_code"] == "ENDPOINT_NOT_FOUND"


def test_auth_is_checked_before_endpoint_existence(gateway: GatewayProcess) -> None:
    response = post(gateway, "/serving-endpoints/nope/invocations", key=None, json=SCORE)
    assert response.status_code == 401


def test_a_wrong_method_gets_405(gateway: GatewayProcess) -> None:
    response = httpx.get(f"{gateway.url}/invocations")
    assert response.status_code == 405
    assert response.json()["error_code"] == "BAD_REQUEST"


def test_an_unknown_path_gets_404(gateway: GatewayProcess) -> None:
    response = httpx.get(f"{gateway.url}/nothing/here")
    assert response.status_code == 404
    assert set(response.json()) == {"error_code", "message"}


def test_a_body_over_the_limit_gets_413(gateway: GatewayProcess) -> None:
    big = {"dataframe_split": {**IRIS_ROW, "data": IRIS_ROW["data"] * 400}}
    response = post(gateway, "/invocations", json=big)
    assert response.status_code == 413
    assert response.json()["error_code"] == "BAD_REQUEST"


def test_a_chunked_body_over_the_limit_gets_413(gateway: GatewayProcess) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(10):
            yield b" " * 1000

    response = post(gateway, "/invocations", content=chunks())
    assert response.status_code == 413


@pytest.mark.parametrize("path", ["/ping", "/health", "/live", "/ready", "/version"])
def test_health_routes_are_open(gateway: GatewayProcess, path: str) -> None:
    assert httpx.get(f"{gateway.url}{path}").status_code == 200


def test_ready_lists_the_loaded_endpoints(gateway: GatewayProcess, models: TestModels) -> None:
    body = httpx.get(f"{gateway.url}/ready").json()
    assert body["ready"] is True
    assert set(body["endpoints"]) == {"iris", "diabetes"}


def test_version_is_mlflows_bare_version_and_ours_has_its_own_route(
    gateway: GatewayProcess,
) -> None:
    host, port = gateway.url.removeprefix("http://").split(":")
    assert ScoringServerClient(host, int(port)).get_version() == mlflow.__version__
    versions = httpx.get(f"{gateway.url}/version/gateway").json()
    assert versions == {"gateway": __version__, "mlflow": mlflow.__version__}


def test_the_openapi_document_describes_the_routes(gateway: GatewayProcess) -> None:
    document = httpx.get(f"{gateway.url}/openapi.json").json()
    assert "/serving-endpoints/{name}/invocations" in document["paths"]
    assert "/invocations" in document["paths"]
    assert "/ready" in document["paths"]


def test_keys_never_reach_the_log(gateway: GatewayProcess) -> None:
    post(gateway, "/invocations", key="gw-wrong-key-that-must-not-be-logged", json=SCORE)
    post(gateway, "/invocations", json=SCORE)
    log = gateway.log()
    for secret in (ANALYST_KEY, ADMIN_KEY, "gw-wrong-key-that-must-not-be-logged"):
        assert secret not in log


def test_a_config_without_auth_runs_open_and_says_so(models: TestModels, tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        f"endpoints:\n  - {{name: iris, type: custom, served_models: [{{model: '{models.classifier}'}}]}}\n",
    )
    with run_gateway(config, workdir=tmp_path) as gateway:
        response = post(gateway, "/invocations", key=None, json=SCORE)
        assert response.status_code == 200, response.text
        assert "NO AUTH CONFIGURED" in gateway.log()
