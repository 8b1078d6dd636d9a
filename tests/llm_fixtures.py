"""Shared pieces of the LLM end-to-end tests (`tests/test_llm_*.py`, `test_anthropic_messages.py`).

Each test module runs ONE gateway process (its own module-scoped `gateway` fixture, built with
`llm_gateway`) in front of module-scoped fake upstreams, and imports the fixtures below:

    from tests.llm_fixtures import (  # noqa: F401  (fixtures)
        clean_fakes_fixture, openai_fake_fixture, sdk_fixture,
    )

Fixtures are declared as `<name>_fixture` with `name=<name>`, so that importing them does not
shadow the parameter names tests use. `clean_fakes` is autouse: every fake a test touches
starts without faults, delays or recorded requests.
"""

from __future__ import annotations

import textwrap
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any

import anthropic
import httpx
import openai
import pytest
from anthropic.types import MessageParam, TextBlock
from openai.types.chat import ChatCompletionMessageParam

from gateway.auth.keys import key_digest
from tests.fakes.anthropic_upstream import FakeAnthropic
from tests.fakes.openai_upstream import FakeOpenAI
from tests.fakes.server import FakeUpstream, wait_until
from tests.gateway_process import GatewayProcess, run_gateway, write_config

APP_KEY = "gw-app-test-key-0123456789abcdef0123"
ADMIN_KEY = "gw-admin-test-key-0123456789abcdef012"
UPSTREAM_KEY = "sk-upstream-secret-4242"  # what deployments present upstream; never shown
USER: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello big world"}]
CLAUDE_USER: list[MessageParam] = [{"role": "user", "content": "hello big world"}]  # the same
HELLO_REPLY = "echo: hello big world"
HELLO_PROMPT_TOKENS = 3 + 3  # the fakes' count: words + 3 per message
HELLO_COMPLETION_TOKENS = 4

FAKE_FIXTURES = ("openai_fake", "openai_fake_b", "anthropic_fake")


def text_of(block: object) -> str:
    """The text of an Anthropic content block, which must be a text block."""
    assert isinstance(block, TextBlock), block
    return block.text


def error_body(error: openai.APIError | anthropic.APIError) -> dict[str, Any]:
    """The JSON body of an SDK's error (both SDKs type it `object`)."""
    assert isinstance(error.body, dict), error.body
    return error.body


def request_id() -> str:
    """A fresh x-request-id, to find the call's usage event afterwards."""
    return f"t-{uuid.uuid4().hex[:16]}"


def with_id(rid: str) -> dict[str, Any]:
    """SDK keyword arguments that send `rid` as the call's x-request-id."""
    return {"extra_headers": {"x-request-id": rid}}


# --- gateway --------------------------------------------------------------------------------------


def config_text(endpoints_yaml: str, app_endpoints: Sequence[str]) -> str:
    allowed = ", ".join(f'"{pattern}"' for pattern in app_endpoints)
    auth = textwrap.dedent(
        f"""\
        auth:
          keys:
            - {{id: app, sha256: "{key_digest(APP_KEY)}", endpoints: [{allowed}]}}
            - {{id: admin, sha256: "{key_digest(ADMIN_KEY)}", roles: [user, admin]}}
        endpoints:
        """
    )
    return auth + textwrap.indent(textwrap.dedent(endpoints_yaml).strip("\n"), "  ") + "\n"


def task_endpoints(base: str) -> str:
    """`endpoints:` items: a foundation endpoint per task (`chat`, `text`, `embed`) on `base`."""
    return textwrap.indent(
        textwrap.dedent(
            f"""\
            - name: chat
              type: foundation
              task: chat
              deployments: [{{api_base: "{base}", model: upstream-chat}}]
            - name: text
              type: foundation
              task: completions
              deployments: [{{api_base: "{base}", model: upstream-instruct}}]
            - name: embed
              type: foundation
              task: embeddings
              deployments: [{{api_base: "{base}", model: upstream-embed}}]
            """
        ),
        "    ",
    )


@contextmanager
def llm_gateway(
    tmp_path_factory: pytest.TempPathFactory,
    endpoints_yaml: str,
    *,
    app_endpoints: Sequence[str] = ("*",),
) -> Iterator[GatewayProcess]:
    """A gateway serving `endpoints_yaml` (the items of `endpoints:`), with keys `APP_KEY` (allowed
    on `app_endpoints`) and `ADMIN_KEY` (everything, admin role)."""
    workdir = tmp_path_factory.mktemp("llm-gateway")
    config = write_config(workdir, config_text(endpoints_yaml, app_endpoints))
    with run_gateway(config, workdir=workdir) as gateway:
        yield gateway


def usage_event(gateway: GatewayProcess, rid: str, timeout: float = 3.0) -> dict[str, Any]:
    """The usage event of the request sent with x-request-id `rid` (a stream's is recorded when
    it ends: poll for it)."""
    deadline = time.monotonic() + timeout
    while True:
        response = httpx.get(
            f"{gateway.url}/admin/usage/recent?limit=500",
            headers={"authorization": f"Bearer {ADMIN_KEY}"},
        )
        assert response.status_code == 200, response.text
        found: list[dict[str, Any]] = [
            event for event in response.json()["data"] if event["client_request_id"] == rid
        ]
        if found:
            assert len(found) == 1, found
            return found[0]
        if time.monotonic() > deadline:
            raise AssertionError(f"no usage event for request {rid}")
        time.sleep(0.02)


def ready(gateway: GatewayProcess) -> dict[str, Any]:
    response = httpx.get(f"{gateway.url}/ready")
    assert response.status_code == 200, response.text
    state: dict[str, Any] = response.json()
    return state


def openai_client(
    gateway: GatewayProcess, key: str = APP_KEY, timeout: float = 15.0, **options: Any
) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{gateway.url}/v1", api_key=key, max_retries=0, timeout=timeout, **options
    )


def async_openai_client(
    gateway: GatewayProcess, key: str = APP_KEY, timeout: float = 15.0
) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=f"{gateway.url}/v1", api_key=key, max_retries=0, timeout=timeout
    )


def anthropic_client(
    gateway: GatewayProcess, key: str = APP_KEY, timeout: float = 15.0
) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.url, api_key=key, max_retries=0, timeout=timeout)


def upstream_bodies(fake: FakeUpstream, path: str | None = None) -> list[Any]:
    return [r.body for r in fake.requests if path is None or r.path == path]


# --- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module", name="openai_fake")
def openai_fake_fixture() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture(scope="module", name="openai_fake_b")
def openai_fake_b_fixture() -> Iterator[FakeOpenAI]:
    """A second OpenAI-format upstream: another deployment, or a fallback endpoint's."""
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture(scope="module", name="anthropic_fake")
def anthropic_fake_fixture() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as fake:
        yield fake


@pytest.fixture(autouse=True, name="clean_fakes")
def clean_fakes_fixture(request: pytest.FixtureRequest) -> None:
    """Every fake in the test's fixture closure starts clean (faults, delays, records)."""
    for name in FAKE_FIXTURES:
        if name in request.fixturenames:
            fake: FakeUpstream = request.getfixturevalue(name)
            # A call the gateway failed to end in the previous test would blur this test's
            # counts (requests, in flight, cancelled): it is that test's failure, reported here.
            assert wait_until(partial(_idle, fake), timeout=5), f"{name} is still busy"
            fake.reset()


def _idle(fake: FakeUpstream) -> bool:
    return fake.in_flight == 0


@pytest.fixture(name="sdk")
def sdk_fixture(gateway: GatewayProcess) -> Iterator[openai.OpenAI]:
    """The OpenAI SDK on the module's gateway, with the app key."""
    with openai_client(gateway) as client:
        yield client


@pytest.fixture(name="claude_sdk")
def claude_sdk_fixture(gateway: GatewayProcess) -> Iterator[anthropic.Anthropic]:
    """The Anthropic SDK on the module's gateway, with the app key."""
    with anthropic_client(gateway) as client:
        yield client
