"""Endpoints that do not speak OpenAI's format upstream, behind the OpenAI routes: an external
`anthropic` provider (through litellm) and a custom MLflow ChatModel."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from tests.fakes.anthropic_upstream import FakeAnthropic
from tests.fakes.server import wait_until
from tests.gateway_process import GatewayProcess
from tests.llm_fixtures import (  # noqa: F401  (fixtures)
    CLAUDE_USER,
    HELLO_REPLY,
    USER,
    anthropic_client,
    anthropic_fake_fixture,
    clean_fakes_fixture,
    llm_gateway,
    request_id,
    sdk_fixture,
    text_of,
    usage_event,
    with_id,
)
from tests.models import TestModels

CLAUDE_KEY = "sk-test"
WORDS = ["echo:", " hello", " big", " world"]


@pytest.fixture(scope="module")
def gateway(
    anthropic_fake: FakeAnthropic, models: TestModels, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    endpoints = f"""
    - name: claude
      type: external
      provider: anthropic
      task: chat
      model: claude-x
      api_key: {CLAUDE_KEY}
      api_base: "{anthropic_fake.url}"
      retries: 1
      timeout_s: 10
    - name: claude-quick
      type: external
      provider: anthropic
      task: chat
      model: claude-x
      api_key: {CLAUDE_KEY}
      api_base: "{anthropic_fake.url}"
      retries: 0
      timeout_s: 1
    - name: echo
      type: custom
      served_models: [{{model: "{models.chat}"}}]
    """
    with llm_gateway(tmp_path_factory, endpoints) as process:
        yield process


# --- external provider `anthropic`, through litellm ---------------------------------------------


def test_claude_through_the_openai_sdk(
    gateway: GatewayProcess, anthropic_fake: FakeAnthropic, sdk: openai.OpenAI
) -> None:
    rid = request_id()
    raw = sdk.chat.completions.with_raw_response.create(
        model="claude",
        messages=[{"role": "system", "content": "be brief"}, *USER],
        max_tokens=64,
        **with_id(rid),
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == HELLO_REPLY
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    # The fake counts Anthropic's system prompt as prompt words too: 2 + (3 + 3).
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (8, 4)
    assert raw.headers["x-served-model"] == "claude/anthropic/claude-x"

    # The upstream saw Anthropic's wire format, not OpenAI's.
    [upstream] = anthropic_fake.requests
    assert upstream.path == "/v1/messages"
    assert CLAUDE_KEY in (upstream.headers.get("x-api-key"), upstream.headers.get("authorization"))
    assert "anthropic-version" in upstream.headers
    assert upstream.body["model"] == "claude-x"
    assert upstream.body["max_tokens"] == 64
    assert "be brief" in str(upstream.body["system"])
    assert [m["role"] for m in upstream.body["messages"]] == ["user"]

    event = usage_event(gateway, rid)
    assert (event["endpoint"], event["served"], event["status"]) == (
        "claude",
        "anthropic/claude-x",
        200,
    )
    assert (event["prompt_tokens"], event["completion_tokens"], event["estimated"]) == (8, 4, False)


def test_claude_streaming_through_the_openai_sdk(
    gateway: GatewayProcess, anthropic_fake: FakeAnthropic, sdk: openai.OpenAI
) -> None:
    rid = request_id()
    with sdk.chat.completions.create(
        model="claude", messages=USER, max_tokens=64, stream=True, **with_id(rid)
    ) as stream:
        chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == HELLO_REPLY
    assert all(chunk.usage is None for chunk in chunks)  # the client did not ask for usage
    assert anthropic_fake.requests[-1].body["stream"] is True
    event = usage_event(gateway, rid)
    assert (event["status"], event["prompt_tokens"], event["completion_tokens"]) == (200, 6, 4)


def test_claude_from_the_anthropic_sdk_round_trips(
    gateway: GatewayProcess, anthropic_fake: FakeAnthropic
) -> None:
    with anthropic_client(gateway) as claude:
        message = claude.messages.create(model="claude", max_tokens=32, messages=CLAUDE_USER)
    assert text_of(message.content[0]) == HELLO_REPLY
    assert (message.usage.input_tokens, message.usage.output_tokens) == (6, 4)


@pytest.mark.parametrize("status", [529, 500])
def test_claude_overloaded_or_failing_is_502_after_retries(
    anthropic_fake: FakeAnthropic, sdk: openai.OpenAI, status: int
) -> None:
    anthropic_fake.inject("status", times=2, status=status, message="Overloaded")
    with pytest.raises(openai.APIStatusError) as error:
        sdk.chat.completions.create(model="claude", messages=USER, max_tokens=16)
    assert error.value.status_code == 502
    assert "claude" in error.value.message
    assert CLAUDE_KEY not in error.value.response.text
    assert len(anthropic_fake.requests) == 2  # retries: 1, and none of litellm's own


def test_a_claude_400_is_passed_through(anthropic_fake: FakeAnthropic, sdk: openai.OpenAI) -> None:
    anthropic_fake.inject("status", status=400, message="prompt is too long")
    with pytest.raises(openai.BadRequestError) as error:
        sdk.chat.completions.create(model="claude", messages=USER, max_tokens=16)
    assert "prompt is too long" in error.value.message
    assert len(anthropic_fake.requests) == 1


def test_a_persistent_claude_429_is_a_rate_limit_error(
    anthropic_fake: FakeAnthropic, sdk: openai.OpenAI
) -> None:
    anthropic_fake.inject("status", times=2, status=429, retry_after="0")
    with pytest.raises(openai.RateLimitError):
        sdk.chat.completions.create(model="claude", messages=USER, max_tokens=16)
    assert len(anthropic_fake.requests) == 2


def test_a_stalled_claude_stream_ends_with_an_error_event(
    gateway: GatewayProcess, anthropic_fake: FakeAnthropic, sdk: openai.OpenAI
) -> None:
    rid = request_id()
    anthropic_fake.inject("stall", after=4, seconds=30)  # after the first word
    received: list[str] = []
    with (
        sdk.chat.completions.create(
            model="claude-quick", messages=USER, max_tokens=16, stream=True, **with_id(rid)
        ) as stream,
        pytest.raises(openai.APIError),
    ):
        for chunk in stream:
            received += [c.delta.content for c in chunk.choices if c.delta.content]
    assert received == WORDS[:1]
    assert wait_until(lambda: anthropic_fake.cancelled == 1)
    assert usage_event(gateway, rid)["status"] == 504


def test_a_client_leaving_a_claude_stream_cancels_the_upstream(
    gateway: GatewayProcess, anthropic_fake: FakeAnthropic, sdk: openai.OpenAI
) -> None:
    rid = request_id()
    anthropic_fake.inject("stall", after=4, seconds=30)
    with sdk.chat.completions.create(
        model="claude", messages=USER, max_tokens=16, stream=True, **with_id(rid)
    ) as stream:
        next(iter(stream))
    assert wait_until(lambda: anthropic_fake.cancelled == 1, timeout=3)
    assert usage_event(gateway, rid)["status"] == 499


# --- custom MLflow ChatModel --------------------------------------------------------------------


def test_a_chat_model_answers_on_chat_completions(
    gateway: GatewayProcess, sdk: openai.OpenAI, models: TestModels
) -> None:
    rid = request_id()
    raw = sdk.chat.completions.with_raw_response.create(
        model="echo", messages=USER, temperature=0.2, **with_id(rid)
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == HELLO_REPLY
    assert completion.choices[0].message.role == "assistant"
    assert raw.headers["x-served-model"] == str(models.chat)  # as on /invocations
    event = usage_event(gateway, rid)
    assert (event["endpoint"], event["status"], event["served"]) == ("echo", 200, str(models.chat))
    assert event["prompt_tokens"] > 0
    assert event["completion_tokens"] > 0


def test_a_chat_model_streams_its_answer(gateway: GatewayProcess, sdk: openai.OpenAI) -> None:
    rid = request_id()
    with sdk.chat.completions.create(
        model="echo", messages=USER, stream=True, **with_id(rid)
    ) as stream:
        chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == HELLO_REPLY
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert usage_event(gateway, rid)["status"] == 200


def test_models_lists_llm_and_chat_model_endpoints(sdk: openai.OpenAI) -> None:
    assert sorted(model.id for model in sdk.models.list()) == ["claude", "claude-quick", "echo"]


def test_a_chat_model_rejects_other_tasks(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError):
        sdk.embeddings.create(model="echo", input="x")


def test_anthropic_messages_reach_a_chat_model(gateway: GatewayProcess) -> None:
    with anthropic_client(gateway) as claude:
        message = claude.messages.create(model="echo", max_tokens=32, messages=CLAUDE_USER)
    assert text_of(message.content[0]) == HELLO_REPLY
    with (
        anthropic_client(gateway) as claude,
        claude.messages.stream(model="echo", max_tokens=32, messages=CLAUDE_USER) as stream,
    ):
        assert "".join(stream.text_stream) == HELLO_REPLY
