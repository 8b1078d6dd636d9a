"""JWT bearer tokens through a real gateway: group policy decides what a subject may call."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from gateway.auth.keys import key_digest
from tests.gateway_process import GatewayProcess, run_gateway, write_config
from tests.models import IRIS_ONE_ROW, TestModels
from tests.test_jwt import AUDIENCE, EC, ISSUER, RSA, JWKSServer, mint

ANALYST_KEY = "gw-jwt-test-analyst-key-0123456789"
SCORE = IRIS_ONE_ROW


@pytest.fixture(scope="module")
def idp() -> Iterator[JWKSServer]:
    server = JWKSServer([RSA, EC])
    yield server
    server.close()


@pytest.fixture(scope="module")
def gateway(
    models: TestModels, idp: JWKSServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    workdir = tmp_path_factory.mktemp("jwt")
    digest = key_digest(ANALYST_KEY)
    config = write_config(
        workdir,
        f"""
groups:
  scientists: {{endpoints: ["iris*"]}}
  operators: {{roles: [admin]}}
auth:
  keys:
    - {{id: analyst, sha256: "{digest}", groups: [scientists]}}
  jwt:
    issuer: "{ISSUER}"
    audience: "{AUDIENCE}"
    jwks_url: "{idp.url}"
endpoints:
  - {{name: iris, type: custom, served_models: [{{model: "{models.classifier}"}}]}}
  - {{name: diabetes, type: custom, served_models: [{{model: "{models.regressor}"}}]}}
""",
    )
    with run_gateway(config, workdir=workdir) as process:
        yield process


DIABETES = {
    "dataframe_records": [
        dict.fromkeys(["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"], 0.01)
    ]
}


def call(gateway: GatewayProcess, endpoint: str, credential: str) -> httpx.Response:
    return httpx.post(
        f"{gateway.url}/serving-endpoints/{endpoint}/invocations",
        json=DIABETES if endpoint == "diabetes" else SCORE,
        headers={"authorization": f"Bearer {credential}"},
    )


def test_a_token_of_a_group_may_call_the_groups_endpoints(gateway: GatewayProcess) -> None:
    token = mint(RSA, groups=["scientists"])
    assert call(gateway, "iris", token).status_code == 200
    denied = call(gateway, "diabetes", token)
    assert denied.status_code == 403
    assert denied.json()["message"] == "Subject 'alice' is not allowed to call endpoint 'diabetes'."


def test_a_token_naming_no_configured_group_may_call_nothing(gateway: GatewayProcess) -> None:
    assert call(gateway, "iris", mint(EC, groups=["strangers"])).status_code == 403


def test_a_group_without_endpoint_globs_allows_every_endpoint(gateway: GatewayProcess) -> None:
    assert call(gateway, "diabetes", mint(EC, groups=["operators"])).status_code == 200


@pytest.mark.parametrize(
    ("claims", "message"),
    [
        ({"exp": 1}, "Token has expired."),
        ({"aud": "someone-else"}, "Token audience does not include"),
        ({"iss": "https://evil.example"}, "Token issuer is not the expected"),
    ],
)
def test_invalid_tokens_get_401_in_the_protocol_shape(
    gateway: GatewayProcess, claims: dict[str, Any], message: str
) -> None:
    response = call(gateway, "iris", mint(RSA, groups=["scientists"], **claims))
    assert response.status_code == 401
    body = response.json()
    assert body["error_code"] == "UNAUTHENTICATED"
    assert body["message"].startswith(message)


def test_api_keys_still_work_beside_tokens(gateway: GatewayProcess) -> None:
    assert call(gateway, "iris", ANALYST_KEY).status_code == 200
    assert call(gateway, "diabetes", ANALYST_KEY).status_code == 403


def test_the_subject_is_the_principal_of_the_usage_event(gateway: GatewayProcess) -> None:
    admin_token = mint(RSA, sub="ops-bot", groups=["operators"])
    call(gateway, "iris", mint(RSA, sub="carol", groups=["scientists"]))
    recent = httpx.get(
        f"{gateway.url}/admin/usage/recent?limit=1",
        headers={"authorization": f"Bearer {admin_token}"},
    ).json()["data"]
    assert recent[0]["principal"] == "carol"
    assert recent[0]["groups"] == ["scientists"]


def test_a_subject_named_like_a_key_is_recorded_as_a_subject(gateway: GatewayProcess) -> None:
    admin_token = mint(RSA, sub="ops-bot", groups=["operators"])
    assert call(gateway, "iris", mint(RSA, sub="analyst", groups=["scientists"])).is_success
    assert call(gateway, "iris", ANALYST_KEY).is_success
    recent = httpx.get(
        f"{gateway.url}/admin/usage/recent?limit=2",
        headers={"authorization": f"Bearer {admin_token}"},
    ).json()["data"]
    assert [(e["principal"], e["principal_kind"]) for e in recent] == [
        ("analyst", "jwt"),
        ("analyst", "key"),
    ]
