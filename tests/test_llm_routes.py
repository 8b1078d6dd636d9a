"""The OpenAI-compatible routes on foundation and OpenAI-format external endpoints, through the
real OpenAI SDK: what the client gets, what the upstream receives, and the client errors."""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.fakes.openai_upstream import FakeOpenAI, embedding_for
from tests.gateway_process import GatewayProcess
from tests.llm_fixtures import (  # noqa: F401  (fixtures)
    ADMIN_KEY,
    APP_KEY,
    HELLO_COMPLETION_TOKENS,
    HELLO_PROMPT_TOKENS,
    HELLO_REPLY,
    UPSTREAM_KEY,
    USER,
    clean_fakes_fixture,
    llm_gateway,
    openai_client,
    openai_fake_fixture,
    request_id,
    sdk_fixture,
    usage_event,
    with_id,
)

APP_ENDPOINTS = ("chat", "text", "embed", "gpt")


@pytest.fixture(scope="module")
def gateway(
    openai_fake: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    base = openai_fake.base_url
    endpoints = f"""
    - name: chat
      type: foundation
      task: chat
      pricing: {{input_per_million: 1.0, output_per_million: 2.0}}
      deployments: [{{api_base: "{base}", model: upstream-chat, api_key: {UPSTREAM_KEY}}}]
    - name: text
      type: foundation
      task: completions
      deployments: [{{api_base: "{base}", model: upstream-instruct}}]
    - name: embed
      type: foundation
      task: embeddings
      deployments: [{{api_base: "{base}", model: upstream-embed}}]
    - name: secret-chat
      type: foundation
      task: chat
      deployments: [{{api_base: "{base}", model: upstream-secret}}]
    - name: gpt
      type: external
      provider: openai
      task: chat
      model: gpt-4o-mini
      api_key: {UPSTREAM_KEY}
      api_base: "{base}"
    """
    with llm_gateway(tmp_path_factory, endpoints, app_endpoints=APP_ENDPOINTS) as process:
        yield process


# --- the happy paths --------------------------------------------------------------------------


def test_chat_completion_is_relayed_with_the_model_rewritten(
    gateway: GatewayProcess, openai_fake: FakeOpenAI, sdk: openai.OpenAI
) -> None:
    rid = request_id()
    raw = sdk.chat.completions.with_raw_response.create(
        model="chat",
        messages=[{"role": "system", "content": "be brief"}, *USER],
        temperature=0.25,
        max_tokens=50,
        user="end-user-7",
        **with_id(rid),
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == HELLO_REPLY
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == 2 + 3 + HELLO_PROMPT_TOKENS
    assert completion.usage.completion_tokens == HELLO_COMPLETION_TOKENS
    assert completion.model == "upstream-chat"  # the upstream's answer, relayed as it came

    assert raw.headers["x-request-id"] == rid
    assert raw.headers["x-served-model"] == "chat/0"
    assert float(raw.headers["x-gateway-overhead-ms"]) >= 0

    [upstream] = openai_fake.requests
    assert upstream.path == "/v1/chat/completions"
    assert upstream.body == {
        "model": "upstream-chat",
        "messages": [{"role": "system", "content": "be brief"}, *USER],
        "temperature": 0.25,
        "max_tokens": 50,
        "user": "end-user-7",
    }
    # The deployment's own key goes upstream; the client's gateway key never does.
    assert upstream.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert APP_KEY not in str(upstream.headers)

    event = usage_event(gateway, rid)
    assert event["principal"] == "app"
    assert event["endpoint"] == "chat"
    assert event["served"] == "chat/0"
    assert event["route"] == "/v1/chat/completions"
    assert event["status"] == 200
    assert (event["prompt_tokens"], event["completion_tokens"]) == (11, 4)
    assert event["estimated"] is False
    assert event["fallback_used"] is False
    assert event["cost_usd"] == pytest.approx((11 * 1.0 + 4 * 2.0) / 1e6)
    assert event["latency_ms"] >= event["overhead_ms"] >= 0


def test_completions(gateway: GatewayProcess, openai_fake: FakeOpenAI, sdk: openai.OpenAI) -> None:
    rid = request_id()
    completion = sdk.completions.create(
        model="text", prompt=["say  this", "and that"], max_tokens=3, **with_id(rid)
    )
    assert [(c.index, c.text, c.finish_reason) for c in completion.choices] == [
        (0, "echo: say this", "stop"),
        (1, "echo: and that", "stop"),
    ]
    [upstream] = openai_fake.requests
    assert upstream.path == "/v1/completions"
    assert upstream.body == {
        "model": "upstream-instruct",
        "prompt": ["say  this", "and that"],
        "max_tokens": 3,
    }
    event = usage_event(gateway, rid)
    assert (event["endpoint"], event["route"], event["status"]) == ("text", "/v1/completions", 200)
    assert (event["prompt_tokens"], event["completion_tokens"]) == (4, 6)
    assert event["cost_usd"] == 0.0  # no pricing configured for a foundation endpoint


def test_embeddings_float_and_base64(
    gateway: GatewayProcess, openai_fake: FakeOpenAI, sdk: openai.OpenAI
) -> None:
    rid = request_id()
    # The SDK asks for base64 by default and decodes it: the bytes must survive the relay.
    result = sdk.embeddings.create(model="embed", input=["alpha beta", "gamma"], **with_id(rid))
    assert [item.embedding for item in result.data] == [
        embedding_for("alpha beta"),
        embedding_for("gamma"),
    ]
    assert openai_fake.requests[-1].body["model"] == "upstream-embed"
    assert openai_fake.requests[-1].body["input"] == ["alpha beta", "gamma"]

    floats = sdk.embeddings.create(model="embed", input="delta", encoding_format="float")
    assert floats.data[0].embedding == embedding_for("delta")
    assert openai_fake.requests[-1].body == {
        "model": "upstream-embed",
        "input": "delta",
        "encoding_format": "float",
    }
    event = usage_event(gateway, rid)
    assert (event["endpoint"], event["status"], event["prompt_tokens"]) == ("embed", 200, 3)
    assert event["completion_tokens"] == 0


def test_embeddings_with_dimensions_raw(gateway: GatewayProcess) -> None:
    response = httpx.post(
        f"{gateway.url}/v1/embeddings",
        headers={"authorization": f"Bearer {APP_KEY}"},
        json={"model": "embed", "input": "x", "dimensions": 4, "encoding_format": "base64"},
    )
    assert response.status_code == 200, response.text
    encoded = response.json()["data"][0]["embedding"]
    assert list(struct.unpack("<4f", base64.b64decode(encoded))) == embedding_for("x", 4)


def test_external_openai_provider_is_called_directly(
    gateway: GatewayProcess, openai_fake: FakeOpenAI, sdk: openai.OpenAI
) -> None:
    raw = sdk.chat.completions.with_raw_response.create(model="gpt", messages=USER, seed=7)
    assert raw.parse().choices[0].message.content == HELLO_REPLY
    assert raw.headers["x-served-model"].startswith("gpt/")
    [upstream] = openai_fake.requests
    assert upstream.path == "/v1/chat/completions"
    assert upstream.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert upstream.body == {"model": "gpt-4o-mini", "messages": USER, "seed": 7}


def test_serving_endpoint_invocations_take_an_openai_body(
    gateway: GatewayProcess, openai_fake: FakeOpenAI
) -> None:
    rid = request_id()
    response = httpx.post(
        f"{gateway.url}/serving-endpoints/chat/invocations",
        headers={"authorization": f"Bearer {APP_KEY}", "x-request-id": rid},
        json={"messages": USER, "max_tokens": 20},
    )
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == HELLO_REPLY
    assert response.headers["x-served-model"] == "chat/0"
    assert openai_fake.requests[-1].body == {
        "model": "upstream-chat",
        "messages": USER,
        "max_tokens": 20,
    }
    event = usage_event(gateway, rid)
    assert event["route"] == "/serving-endpoints/{name}/invocations"  # the route, not the path
    assert (event["endpoint"], event["status"], event["completion_tokens"]) == ("chat", 200, 4)


def test_serving_endpoint_invocations_can_stream(gateway: GatewayProcess) -> None:
    with httpx.stream(
        "POST",
        f"{gateway.url}/serving-endpoints/chat/invocations",
        headers={"authorization": f"Bearer {APP_KEY}"},
        json={"messages": USER, "stream": True},
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == HELLO_REPLY


def test_overhead_excludes_the_upstreams_time(
    gateway: GatewayProcess, openai_fake: FakeOpenAI, sdk: openai.OpenAI
) -> None:
    openai_fake.delay_all(0.3)
    rid = request_id()
    raw = sdk.chat.completions.with_raw_response.create(model="chat", messages=USER, **with_id(rid))
    overhead = float(raw.headers["x-gateway-overhead-ms"])
    assert 0 <= overhead < 100
    event = usage_event(gateway, rid)
    assert event["latency_ms"] >= 300
    assert event["overhead_ms"] == pytest.approx(overhead, abs=1)


def test_models_lists_only_the_endpoints_a_key_may_call(gateway: GatewayProcess) -> None:
    with openai_client(gateway) as app:
        listed = app.models.list()
        assert sorted(model.id for model in listed) == sorted(APP_ENDPOINTS)
        assert {model.object for model in listed} == {"model"}
        assert all(isinstance(model.created, int) for model in listed)
    with openai_client(gateway, key=ADMIN_KEY) as admin:
        assert sorted(model.id for model in admin.models.list()) == sorted(
            [*APP_ENDPOINTS, "secret-chat"]
        )
    raw = httpx.get(f"{gateway.url}/v1/models", headers={"authorization": f"Bearer {APP_KEY}"})
    assert raw.json()["object"] == "list"


# --- client errors, OpenAI-shaped -------------------------------------------------------------


def test_unknown_model_is_404(sdk: openai.OpenAI, openai_fake: FakeOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as error:
        sdk.chat.completions.create(model="no-such-model", messages=USER)
    assert error.value.status_code == 404
    assert "no-such-model" in error.value.message
    assert isinstance(error.value.body, dict)
    assert set(error.value.body) == {"message", "type", "param", "code"}
    assert openai_fake.requests == []


def test_a_key_not_allowed_on_the_endpoint_is_403(
    gateway: GatewayProcess, sdk: openai.OpenAI, openai_fake: FakeOpenAI
) -> None:
    with pytest.raises(openai.PermissionDeniedError) as error:
        sdk.chat.completions.create(model="secret-chat", messages=USER)
    assert "secret-chat" in error.value.message
    assert openai_fake.requests == []
    with openai_client(gateway, key=ADMIN_KEY) as admin:
        answer = admin.chat.completions.create(model="secret-chat", messages=USER)
    assert answer.choices[0].message.content == HELLO_REPLY


@pytest.mark.parametrize(
    ("key", "message"), [(None, "Missing API key"), ("gw-not-a-key", "Invalid API key")]
)
def test_a_missing_or_unknown_key_is_401(
    gateway: GatewayProcess, openai_fake: FakeOpenAI, key: str | None, message: str
) -> None:
    # The SDK insists on a key: "no key" is its Authorization header explicitly left out.
    headers = {"Authorization": openai.Omit()} if key is None else {}
    with openai_client(gateway, key=key or "unused") as anonymous:
        with pytest.raises(openai.AuthenticationError) as error:
            anonymous.chat.completions.create(model="chat", messages=USER, extra_headers=headers)
        assert error.value.status_code == 401
        assert error.value.type == "authentication_error"
        assert message in error.value.message
        with pytest.raises(openai.AuthenticationError):
            anonymous.models.list(extra_headers=headers)
    assert openai_fake.requests == []


def test_embeddings_on_a_chat_endpoint_is_400(sdk: openai.OpenAI, openai_fake: FakeOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as error:
        sdk.embeddings.create(model="chat", input="hello")
    assert "chat" in error.value.message
    with pytest.raises(openai.BadRequestError):
        sdk.chat.completions.create(model="embed", messages=USER)
    assert openai_fake.requests == []


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"model": "chat"}, "'messages' is required"),
        ({"model": "chat", "messages": []}, "'messages' is required"),
        ({"model": "chat", "messages": ["hi"]}, "'messages' must be a list"),
        ({"model": "chat", "messages": USER, "stream": "yes"}, "'stream'"),
        ({"model": "chat", "messages": USER, "max_tokens": 0}, "'max_tokens'"),
        ({"messages": USER}, "'model' is required"),
        ({"model": "embed", "input": "x", "stream": True}, "cannot be streamed"),
        ([1, 2], "JSON object"),
    ],
)
def test_malformed_requests_are_400(
    gateway: GatewayProcess, openai_fake: FakeOpenAI, body: object, fragment: str
) -> None:
    path = (
        "/v1/embeddings" if isinstance(body, dict) and "input" in body else "/v1/chat/completions"
    )
    response = httpx.post(
        f"{gateway.url}{path}", headers={"authorization": f"Bearer {APP_KEY}"}, json=body
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert fragment in error["message"]
    assert error["type"] == "invalid_request_error"
    assert openai_fake.requests == []


def test_a_body_that_is_not_json_is_400(gateway: GatewayProcess) -> None:
    response = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        headers={"authorization": f"Bearer {APP_KEY}", "content-type": "application/json"},
        content=b"{not json",
    )
    assert response.status_code == 400
    assert "not valid JSON" in response.json()["error"]["message"]


def test_no_messages_through_the_sdk_is_a_bad_request(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as error:
        sdk.chat.completions.create(model="chat", messages=[])
    assert error.value.status_code == 400
