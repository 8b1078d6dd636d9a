"""`POST /v1/messages`: Anthropic's Messages API, through the real `anthropic` SDK, served by a
foundation chat endpoint that speaks OpenAI's format upstream."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import cast

import anthropic
import httpx
import pytest
from anthropic.types import ToolChoiceParam, ToolParam

from tests.fakes.openai_upstream import FakeOpenAI
from tests.fakes.server import wait_until
from tests.gateway_process import GatewayProcess
from tests.llm_fixtures import (  # noqa: F401  (fixtures)
    APP_KEY,
    CLAUDE_USER,
    HELLO_REPLY,
    UPSTREAM_KEY,
    USER,
    anthropic_client,
    claude_sdk_fixture,
    clean_fakes_fixture,
    error_body,
    llm_gateway,
    openai_fake_fixture,
    request_id,
    text_of,
    usage_event,
)

WEATHER_TOOL: ToolParam = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


@pytest.fixture(scope="module")
def gateway(
    openai_fake: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    base = openai_fake.base_url
    endpoints = f"""
    - name: chat
      type: foundation
      task: chat
      timeout_s: 1
      retries: 1
      deployments: [{{api_base: "{base}", model: up-chat, api_key: {UPSTREAM_KEY}}}]
    - name: secret
      type: foundation
      task: chat
      deployments: [{{api_base: "{base}", model: up-secret}}]
    - name: embed
      type: foundation
      task: embeddings
      deployments: [{{api_base: "{base}", model: up-embed}}]
    """
    with llm_gateway(tmp_path_factory, endpoints, app_endpoints=("chat", "embed")) as process:
        yield process


def test_a_message_with_a_system_prompt(
    gateway: GatewayProcess, openai_fake: FakeOpenAI, claude_sdk: anthropic.Anthropic
) -> None:
    rid = request_id()
    raw = claude_sdk.messages.with_raw_response.create(
        model="chat",
        max_tokens=100,
        system="be brief",
        messages=CLAUDE_USER,
        stop_sequences=["END"],
        extra_body={"temperature": 0.5},  # not a parameter of this SDK version any more
        extra_headers={"x-request-id": rid},
    )
    message = raw.parse()
    assert message.type == "message"
    assert message.role == "assistant"
    assert message.model == "chat"
    assert message.id.startswith("msg_")
    assert [(block.type, text_of(block)) for block in message.content] == [("text", HELLO_REPLY)]
    assert message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (2 + 3 + 6, 4)
    assert raw.headers["x-served-model"] == "chat/0"

    [upstream] = openai_fake.requests
    assert upstream.path == "/v1/chat/completions"
    assert upstream.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert upstream.body == {
        "model": "up-chat",
        "messages": [{"role": "system", "content": "be brief"}, *USER],
        "max_tokens": 100,
        "temperature": 0.5,
        "stop": ["END"],
    }
    event = usage_event(gateway, rid)
    assert (event["route"], event["endpoint"], event["status"]) == ("/v1/messages", "chat", 200)
    assert (event["prompt_tokens"], event["completion_tokens"]) == (11, 4)


def test_max_tokens_reached_is_the_stop_reason(claude_sdk: anthropic.Anthropic) -> None:
    message = claude_sdk.messages.create(model="chat", max_tokens=2, messages=CLAUDE_USER)
    assert text_of(message.content[0]) == "echo: hello"
    assert message.stop_reason == "max_tokens"


def test_a_streamed_message(
    gateway: GatewayProcess, openai_fake: FakeOpenAI, claude_sdk: anthropic.Anthropic
) -> None:
    rid = request_id()
    with claude_sdk.messages.stream(
        model="chat",
        max_tokens=100,
        system=[{"type": "text", "text": "be brief"}],
        messages=CLAUDE_USER,
        extra_headers={"x-request-id": rid},
    ) as stream:
        assert stream.response.headers["x-served-model"] == "chat/0"
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert pieces == ["echo:", " hello", " big", " world"]
    assert text_of(final.content[0]) == HELLO_REPLY
    assert final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (11, 4)
    body = openai_fake.requests[-1].body
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["messages"][0] == {"role": "system", "content": "be brief"}
    event = usage_event(gateway, rid)
    assert (event["status"], event["prompt_tokens"], event["completion_tokens"]) == (200, 11, 4)


def test_the_stream_is_anthropics_event_sequence(gateway: GatewayProcess) -> None:
    with httpx.stream(
        "POST",
        f"{gateway.url}/v1/messages",
        headers={"x-api-key": APP_KEY, "anthropic-version": "2023-06-01"},
        json={"model": "chat", "max_tokens": 50, "messages": USER, "stream": True},
    ) as response:
        assert response.status_code == 200
        names = [line[7:] for line in response.iter_lines() if line.startswith("event: ")]
    assert names == [
        "message_start",
        "content_block_start",
        *["content_block_delta"] * 4,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]


def test_tools_are_translated_to_openai_tools(
    openai_fake: FakeOpenAI, claude_sdk: anthropic.Anthropic
) -> None:
    message = claude_sdk.messages.create(
        model="chat",
        max_tokens=100,
        tools=[WEATHER_TOOL],
        tool_choice={"type": "tool", "name": "get_weather"},
        messages=[
            {"role": "user", "content": "weather in Paris?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "Let me look."},
                    {
                        "type": "tool_use",
                        "id": "toolu_1",
                        "name": "get_weather",
                        "input": {"city": "Paris"},
                    },
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny and warm"}
                ],
            },
        ],
    )
    assert text_of(message.content[0]) == "echo: sunny and warm"
    body = openai_fake.requests[-1].body
    assert body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "The weather in a city.",
                "parameters": WEATHER_TOOL["input_schema"],
            },
        }
    ]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assistant, tool = body["messages"][1:]
    assert assistant["role"] == "assistant"
    assert assistant["content"] == "Let me look."
    [call] = assistant["tool_calls"]
    assert (call["id"], call["type"], call["function"]["name"]) == (
        "toolu_1",
        "function",
        "get_weather",
    )
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}
    assert tool == {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny and warm"}


@pytest.mark.parametrize(("choice", "expected"), [("auto", "auto"), ("any", "required")])
def test_tool_choice_kinds(
    openai_fake: FakeOpenAI, claude_sdk: anthropic.Anthropic, choice: str, expected: str
) -> None:
    claude_sdk.messages.create(
        model="chat",
        max_tokens=10,
        tools=[WEATHER_TOOL],
        tool_choice=cast(ToolChoiceParam, {"type": choice}),
        messages=CLAUDE_USER,
    )
    assert openai_fake.requests[-1].body["tool_choice"] == expected


def test_an_image_block_becomes_an_image_url_part(
    openai_fake: FakeOpenAI, claude_sdk: anthropic.Anthropic
) -> None:
    message = claude_sdk.messages.create(
        model="chat",
        max_tokens=50,
        messages=[
            {
                "role": "user",
                "content": [
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0"},
                    },
                    {"type": "text", "text": "what is this"},
                ],
            }
        ],
    )
    assert text_of(message.content[0]) == "echo: what is this"
    assert openai_fake.requests[-1].body["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0"}},
                {"type": "text", "text": "what is this"},
            ],
        }
    ]


# --- errors, Anthropic-shaped -------------------------------------------------------------------


def test_an_unknown_model_is_not_found(claude_sdk: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as error:
        claude_sdk.messages.create(model="nope", max_tokens=10, messages=CLAUDE_USER)
    assert error.value.body == {
        "type": "error",
        "error": {"type": "not_found_error", "message": "The model 'nope' does not exist."},
    }


def test_without_a_key_is_an_authentication_error(gateway: GatewayProcess) -> None:
    # The SDK wants credentials: "no key" is both of its key headers explicitly left out.
    no_key = {"X-Api-Key": anthropic.Omit(), "Authorization": anthropic.Omit()}
    with (
        anthropic.Anthropic(base_url=gateway.url, api_key=None, max_retries=0) as anonymous,
        pytest.raises(anthropic.AuthenticationError) as error,
    ):
        anonymous.messages.create(
            model="chat", max_tokens=10, messages=CLAUDE_USER, extra_headers=no_key
        )
    assert error_body(error.value)["error"]["type"] == "authentication_error"
    assert "Missing API key" in error_body(error.value)["error"]["message"]
    with (
        anthropic_client(gateway, key="gw-wrong") as wrong,
        pytest.raises(anthropic.AuthenticationError),
    ):
        wrong.messages.create(model="chat", max_tokens=10, messages=CLAUDE_USER)


def test_a_key_not_allowed_is_a_permission_error(claude_sdk: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.PermissionDeniedError) as error:
        claude_sdk.messages.create(model="secret", max_tokens=10, messages=CLAUDE_USER)
    assert error_body(error.value)["error"]["type"] == "permission_error"


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"model": "chat", "messages": USER}, "'max_tokens' is required"),
        ({"model": "chat", "max_tokens": 5, "messages": []}, "'messages' is required"),
        (
            {"model": "chat", "max_tokens": 5, "messages": [{"role": "system", "content": "x"}]},
            "role of 'user' or 'assistant'",
        ),
        ({"model": "embed", "max_tokens": 5, "messages": USER}, "serves embeddings"),
    ],
)
def test_bad_requests_are_invalid_request_errors(
    gateway: GatewayProcess, openai_fake: FakeOpenAI, body: dict[str, object], fragment: str
) -> None:
    response = httpx.post(
        f"{gateway.url}/v1/messages",
        headers={"x-api-key": APP_KEY, "anthropic-version": "2023-06-01"},
        json=body,
    )
    assert response.status_code == 400, response.text
    assert response.json()["type"] == "error"
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert fragment in response.json()["error"]["message"]
    assert openai_fake.requests == []


def test_an_upstream_400_is_an_anthropic_bad_request(
    openai_fake: FakeOpenAI, claude_sdk: anthropic.Anthropic
) -> None:
    openai_fake.inject("status", status=400, message="context length exceeded")
    with pytest.raises(anthropic.BadRequestError) as error:
        claude_sdk.messages.create(model="chat", max_tokens=10, messages=CLAUDE_USER)
    assert error_body(error.value)["error"]["message"] == "context length exceeded"


def test_upstream_failures_are_a_502_api_error(
    openai_fake: FakeOpenAI, claude_sdk: anthropic.Anthropic
) -> None:
    openai_fake.inject("status", times=2, status=500)
    with pytest.raises(anthropic.APIStatusError) as error:
        claude_sdk.messages.create(model="chat", max_tokens=10, messages=CLAUDE_USER)
    assert error.value.status_code == 502
    assert error_body(error.value)["error"]["type"] == "api_error"
    assert UPSTREAM_KEY not in error.value.response.text


def test_a_stalled_stream_ends_with_an_error_event(
    gateway: GatewayProcess, openai_fake: FakeOpenAI, claude_sdk: anthropic.Anthropic
) -> None:
    rid = request_id()
    openai_fake.inject("stall", after=2, seconds=30)
    pieces: list[str] = []
    with (
        pytest.raises(anthropic.APIStatusError) as error,
        claude_sdk.messages.stream(
            model="chat",
            max_tokens=100,
            messages=CLAUDE_USER,
            extra_headers={"x-request-id": rid},
        ) as stream,
    ):
        for text in stream.text_stream:
            pieces.append(text)
    assert pieces == ["echo:", " hello"]
    assert "stalled" in str(error.value)
    assert wait_until(lambda: openai_fake.cancelled == 1)
    event = usage_event(gateway, rid)
    assert event["status"] == 504
    assert event["completion_tokens"] > 0
