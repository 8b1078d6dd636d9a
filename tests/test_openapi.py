"""The OpenAPI document (`/openapi.json`), `/docs`, the index, and a schema-driven fuzz run of
every documented operation against a real gateway (an MLflow model and a fake OpenAI upstream)."""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from openapi_spec_validator import validate
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    response_schema_conformance,
    status_code_conformance,
)

from gateway import __version__
from gateway.api import docs, openapi
from gateway.routes import ROUTES
from tests.fakes.openai_upstream import FakeOpenAI
from tests.gateway_process import GatewayProcess
from tests.llm_fixtures import (  # noqa: F401  (fixtures)
    ADMIN_KEY,
    APP_KEY,
    clean_fakes_fixture,
    llm_gateway,
    openai_fake_fixture,
    task_endpoints,
)
from tests.models import TestModels

# The scoring routes also take CSV and parquet bodies: send what the fuzzer draws as bytes.
schemathesis.serializer.alias("text/csv", "text/plain")
schemathesis.serializer.alias("application/vnd.apache.parquet", "application/octet-stream")

LLM_ENDPOINTS = ("chat", "text", "embed")
# Valid requests, and requests that break the schema (each must get a documented 4xx).
EXAMPLES_PER_OPERATION = {GenerationMode.POSITIVE: 25, GenerationMode.NEGATIVE: 10}
CHECKS = [not_a_server_error, response_schema_conformance, status_code_conformance]


@pytest.fixture(scope="module")
def gateway(
    models: TestModels, openai_fake: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    base = openai_fake.base_url
    endpoints = f"""
    - name: iris
      type: custom
      default: true
      served_models: [{{model: "{models.classifier}"}}]
{task_endpoints(base)}    """
    with llm_gateway(tmp_path_factory, endpoints) as process:
        yield process


# --- the document -------------------------------------------------------------------------------


def test_the_document_is_valid_openapi_3_1() -> None:
    document = orjson.loads(openapi.openapi_document())
    assert document["openapi"] == "3.1.0"
    schemathesis.openapi.from_dict(document).validate()  # the OpenAPI 3.1 meta-schema
    validate(document)  # and openapi-spec-validator's own reading of 3.1


def test_every_route_is_documented_with_its_methods() -> None:
    paths = orjson.loads(openapi.openapi_document())["paths"]
    for route in ROUTES:
        assert route.path in paths, route.path
        documented = {method.upper() for method in paths[route.path]}
        assert documented == route.methods - {"HEAD"}, route.path
    assert set(paths) == {route.path for route in ROUTES}


def test_path_parameters_are_declared() -> None:
    paths = orjson.loads(openapi.openapi_document())["paths"]
    for path, operations in paths.items():
        names = set(re.findall(r"\{(\w+)\}", path))
        for operation in operations.values():
            declared = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
            assert declared == names, path
    (parameter,) = paths["/serving-endpoints/{name}/invocations"]["post"]["parameters"]
    assert parameter == {**parameter, "name": "name", "in": "path", "required": True}


def test_errors_speak_the_protocol_of_their_route() -> None:
    paths = orjson.loads(openapi.openapi_document())["paths"]
    expected = {"/v1/messages": "AnthropicError"}
    for path, operations in paths.items():
        if path in openapi.HEALTH_LINKS:
            continue  # their 503 says "loading" in their own body, as MLflow's /ping does
        shape = expected.get(path, "OpenAIError" if path.startswith("/v1/") else "MlflowError")
        for operation in operations.values():
            for status, response in operation["responses"].items():
                if status[0] in "45":
                    schema = response["content"]["application/json"]["schema"]
                    assert schema == {"$ref": f"#/components/schemas/{shape}"}, (path, status)


def test_open_routes_need_no_credentials() -> None:
    document = orjson.loads(openapi.openapi_document())
    assert set(document["components"]["securitySchemes"]) == {"bearer", "apiKey"}
    open_paths = {
        path
        for path, operations in document["paths"].items()
        for operation in operations.values()
        if operation.get("security") == []
    }
    assert open_paths == {
        *openapi.HEALTH_LINKS,
        "/version/gateway",
        "/metrics",
        "/",
        "/openapi.json",
        "/docs",
        "/docs/assets/{file}",
    }


def test_the_swagger_ui_rendering_is_valid_openapi_3_0() -> None:
    body, content_type = docs.docs_asset(docs.SPEC_30) or (b"", b"")
    document = orjson.loads(body)
    assert document["openapi"] == "3.0.3" and content_type == b"application/json"
    assert document["paths"].keys() == orjson.loads(openapi.openapi_document())["paths"].keys()
    schemathesis.openapi.from_dict(document).validate()


# --- served ------------------------------------------------------------------------------------


def test_openapi_json_is_served_openly(gateway: GatewayProcess) -> None:
    response = httpx.get(f"{gateway.url}/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.content == openapi.openapi_document()


def test_docs_loads_only_local_assets(gateway: GatewayProcess) -> None:
    response = httpx.get(f"{gateway.url}/docs")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert not re.search(r"https?://", response.text)
    urls = re.findall(r'(?:src|href|url:)\s*=?\s*"([^"]+)"', response.text)
    assert urls and all(url.startswith("/docs/assets/") for url in urls), urls
    for url in urls:
        assert httpx.get(f"{gateway.url}{url}").status_code == 200, url


@pytest.mark.parametrize(
    ("name", "content_type"),
    [
        ("swagger-ui-bundle.js", "text/javascript; charset=utf-8"),
        ("swagger-ui.css", "text/css; charset=utf-8"),
        ("favicon-32x32.png", "image/png"),
        (docs.SPEC_30, "application/json"),
    ],
)
def test_assets_have_their_content_types(
    gateway: GatewayProcess, name: str, content_type: str
) -> None:
    response = httpx.get(f"{gateway.url}/docs/assets/{name}")
    assert response.status_code == 200
    assert response.headers["content-type"] == content_type
    assert len(response.content) > 100


@pytest.mark.parametrize(
    "name", ["index.html", "swagger-ui-bundle.js.map", "..%2F..%2F__init__.py", "%2e%2e"]
)
def test_only_whitelisted_assets_are_served(gateway: GatewayProcess, name: str) -> None:
    response = httpx.get(f"{gateway.url}/docs/assets/{name}")
    assert response.status_code == 404
    assert response.json()["error_code"] == "ENDPOINT_NOT_FOUND"


def test_the_index_names_the_gateway_and_links_the_docs(gateway: GatewayProcess) -> None:
    response = httpx.get(f"{gateway.url}/")
    assert response.status_code == 200
    assert response.json() == {
        "name": "gateway",
        "version": __version__,
        "links": {
            "docs": "/docs",
            "openapi": "/openapi.json",
            "ping": "/ping",
            "health": "/health",
            "live": "/live",
            "ready": "/ready",
            "version": "/version",
        },
    }
    for link in response.json()["links"].values():
        assert httpx.get(f"{gateway.url}{link}").status_code == 200, link


# --- fuzzing -----------------------------------------------------------------------------------


OPEN_PATHS = {
    *openapi.HEALTH_LINKS,
    "/version/gateway",
    "/metrics",
    "/",
    "/openapi.json",
    "/docs",
    "/docs/assets/{file}",
}


def _credentials(path: str) -> list[str | None]:
    """The keys each operation is fuzzed with. /admin/reload never gets the admin key: a fuzzed
    body would replace the running config."""
    if path in OPEN_PATHS:
        return [None]
    if path == "/admin/reload":
        return [None, APP_KEY]
    if path.startswith("/admin/"):
        return [ADMIN_KEY]
    return [APP_KEY]


def _aimed(case: Any, endpoint: str | None) -> Any:
    """Point some cases at endpoints that exist, so that they get past the 404."""
    if endpoint is None:
        return case
    if case.path_parameters and "name" in case.path_parameters:
        case.path_parameters["name"] = endpoint
    elif isinstance(case.body, dict) and "model" in case.body:
        case.body["model"] = endpoint
    return case


def _fuzz(operation: Any, url: str, key: str | None, mode: GenerationMode) -> None:
    headers = {"authorization": f"Bearer {key}"} if key else {}

    @settings(
        max_examples=EXAMPLES_PER_OPERATION[mode],
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(
        case=operation.as_strategy(mode), endpoint=st.sampled_from([None, "iris", *LLM_ENDPOINTS])
    )
    def fuzz(case: Any, endpoint: str | None) -> None:
        _aimed(case, endpoint).call_and_validate(
            base_url=url, headers=headers, checks=CHECKS, timeout=15
        )

    fuzz()


@pytest.mark.slow
def test_the_fuzzer_finds_no_server_errors_or_schema_mismatches(
    gateway: GatewayProcess,
) -> None:
    schema = schemathesis.openapi.from_url(f"{gateway.url}/openapi.json")
    failures: list[str] = []
    started = time.monotonic()
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result.err()
        operation = result.ok()
        for key, mode in itertools.product(_credentials(operation.path), GenerationMode):
            try:
                _fuzz(operation, gateway.url, key, mode)
            except Unsatisfiable:
                assert mode is GenerationMode.NEGATIVE, operation.label  # nothing to break
            except (Exception, BaseExceptionGroup) as error:  # collected: report every operation
                failures.append(f"{operation.label} ({mode.value}, key {key and key[:9]}): {error}")
    assert not failures, "\n\n".join(failures)
    assert time.monotonic() - started < 120
