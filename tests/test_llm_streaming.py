"""Streaming through the gateway: chunks relayed as they come, usage asked of the upstream but
shown only to clients who asked, metering (reported or estimated), broken and stalled streams,
and a client that goes away."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.fakes.openai_upstream import FakeOpenAI
from tests.fakes.server import wait_until
from tests.gateway_process import GatewayProcess
from tests.llm_fixtures import (  # noqa: F401  (fixtures)
    APP_KEY,
    HELLO_REPLY,
    USER,
    clean_fakes_fixture,
    llm_gateway,
    openai_client,
    openai_fake_fixture,
    ready,
    request_id,
    sdk_fixture,
    usage_event,
    with_id,
)

WORDS = ["echo:", " hello", " big", " world"]
IDLE_TIMEOUT_S = 1.0


@pytest.fixture(scope="module")
def gateway(
    openai_fake: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    base = openai_fake.base_url
    endpoints = f"""
    - name: chat
      type: foundation
      task: chat
      timeout_s: {IDLE_TIMEOUT_S}
      retries: 1
      pricing: {{input_per_million: 3.0, output_per_million: 5.0}}
      deployments: [{{api_base: "{base}", model: up-chat}}]
    - name: text
      type: foundation
      task: completions
      deployments: [{{api_base: "{base}", model: up-text}}]
    - name: capped
      type: foundation
      task: chat
      retries: 0
      provisioned: {{max_concurrent: 1, queue_timeout_s: 0.2}}
      deployments: [{{api_base: "{base}", model: up-capped}}]
    - name: fragile
      type: foundation
      task: chat
      retries: 0
      cooldown: {{failures: 2, seconds: 300}}
      deployments: [{{api_base: "{base}", model: up-fragile}}]
    """
    with llm_gateway(tmp_path_factory, endpoints) as process:
        yield process


def words_of(chunks: list[Any]) -> list[str]:
    return [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]


@pytest.mark.parametrize("stream_options", [None, {"include_usage": False}])
def test_chunks_are_relayed_and_usage_is_asked_but_not_shown(
    gateway: GatewayProcess,
    openai_fake: FakeOpenAI,
    sdk: openai.OpenAI,
    stream_options: dict[str, bool] | None,
) -> None:
    rid = request_id()
    extra: dict[str, Any] = {} if stream_options is None else {"stream_options": stream_options}
    with sdk.chat.completions.create(
        model="chat", messages=USER, stream=True, temperature=0, **extra, **with_id(rid)
    ) as stream:
        assert stream.response.headers["x-served-model"] == "chat/0"
        assert stream.response.headers["content-type"].startswith("text/event-stream")
        chunks = list(stream)
    assert words_of(chunks) == WORDS
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(chunk.usage is None and chunk.choices for chunk in chunks)  # no usage chunk

    [upstream] = openai_fake.requests
    assert upstream.body == {
        "model": "up-chat",
        "messages": USER,
        "stream": True,
        "temperature": 0,
        "stream_options": {"include_usage": True},
    }
    event = usage_event(gateway, rid)
    assert (event["status"], event["prompt_tokens"], event["completion_tokens"]) == (200, 6, 4)
    assert event["estimated"] is False
    assert event["cost_usd"] == pytest.approx((6 * 3.0 + 4 * 5.0) / 1e6)


def test_the_usage_chunk_reaches_a_client_that_asked(
    gateway: GatewayProcess, openai_fake: FakeOpenAI, sdk: openai.OpenAI
) -> None:
    rid = request_id()
    with sdk.chat.completions.create(
        model="chat",
        messages=USER,
        stream=True,
        stream_options={"include_usage": True},
        **with_id(rid),
    ) as stream:
        chunks = list(stream)
    assert words_of(chunks) == WORDS
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (6, 4)
    assert openai_fake.requests[-1].body["stream_options"] == {"include_usage": True}
    event = usage_event(gateway, rid)
    assert (event["prompt_tokens"], event["completion_tokens"], event["estimated"]) == (6, 4, False)


def test_the_raw_stream_is_server_sent_events_ending_in_done(gateway: GatewayProcess) -> None:
    with httpx.stream(
        "POST",
        f"{gateway.url}/v1/chat/completions",
        headers={"authorization": f"Bearer {APP_KEY}"},
        json={"model": "chat", "messages": USER, "stream": True},
    ) as response:
        assert response.status_code == 200
        events = [line for line in response.iter_lines() if line]
    assert events[-1] == "data: [DONE]"
    assert all(line.startswith("data: ") for line in events)
    assert len(events) == len(WORDS) + 2  # the words, the finish chunk, [DONE]


def test_a_legacy_completions_stream(
    gateway: GatewayProcess, openai_fake: FakeOpenAI, sdk: openai.OpenAI
) -> None:
    rid = request_id()
    with sdk.completions.create(
        model="text", prompt="one two", stream=True, **with_id(rid)
    ) as stream:
        chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "echo: one two"
    assert all(chunk.usage is None for chunk in chunks)
    assert openai_fake.requests[-1].body["stream_options"] == {"include_usage": True}
    event = usage_event(gateway, rid)
    assert (event["endpoint"], event["prompt_tokens"], event["completion_tokens"]) == ("text", 2, 3)


@pytest.mark.parametrize("stream", [False, True])
def test_usage_is_estimated_when_the_upstream_reports_none(
    gateway: GatewayProcess, openai_fake: FakeOpenAI, sdk: openai.OpenAI, stream: bool
) -> None:
    rid = request_id()
    openai_fake.inject("no_usage")
    if stream:
        with sdk.chat.completions.create(
            model="chat", messages=USER, stream=True, **with_id(rid)
        ) as chunks:
            assert words_of(list(chunks)) == WORDS
    else:
        answer = sdk.chat.completions.create(model="chat", messages=USER, **with_id(rid))
        assert answer.choices[0].message.content == HELLO_REPLY
        assert answer.usage is None  # relayed as the upstream sent it
    event = usage_event(gateway, rid)
    assert event["estimated"] is True
    assert event["prompt_tokens"] > 0
    assert event["completion_tokens"] > 0
    assert event["cost_usd"] > 0


def test_a_stream_failing_before_its_first_byte_is_an_http_error(
    gateway: GatewayProcess, openai_fake: FakeOpenAI, sdk: openai.OpenAI
) -> None:
    rid = request_id()
    openai_fake.inject("status", times=2, status=500)
    with pytest.raises(openai.APIStatusError) as error:
        sdk.chat.completions.create(model="chat", messages=USER, stream=True, **with_id(rid))
    assert error.value.status_code == 502
    assert len(openai_fake.requests) == 2  # retried while nothing was sent yet
    assert usage_event(gateway, rid)["status"] == 502


def test_a_stream_answered_with_malformed_json_is_502(
    gateway: GatewayProcess, openai_fake: FakeOpenAI, sdk: openai.OpenAI
) -> None:
    rid = request_id()
    openai_fake.inject("malformed", times=2)  # a 200 whose body is broken JSON, not events
    with pytest.raises(openai.APIStatusError) as error:
        sdk.chat.completions.create(model="chat", messages=USER, stream=True, **with_id(rid))
    assert error.value.status_code == 502
    assert len(openai_fake.requests) == 2  # retried: nothing had reached the client yet
    assert usage_event(gateway, rid)["status"] == 502


def test_a_stream_that_stalls_ends_with_an_error_event(
    gateway: GatewayProcess, openai_fake: FakeOpenAI, sdk: openai.OpenAI
) -> None:
    rid = request_id()
    openai_fake.inject("stall", after=2, seconds=30)
    received: list[str] = []
    started = time.monotonic()
    with (
        sdk.chat.completions.create(
            model="chat", messages=USER, stream=True, **with_id(rid)
        ) as stream,
        pytest.raises(openai.APIError) as error,
    ):
        for chunk in stream:
            received += words_of([chunk])
    assert received == WORDS[:2]
    assert "stalled" in error.value.message
    assert time.monotonic() - started < IDLE_TIMEOUT_S + 2
    assert len(openai_fake.requests) == 1  # never retried once bytes reached the client
    assert wait_until(lambda: openai_fake.cancelled == 1)  # the gateway hung up on it
    event = usage_event(gateway, rid)
    assert event["status"] == 504
    assert event["estimated"] is True
    assert event["completion_tokens"] > 0  # the words that did get through


def test_a_stream_that_breaks_ends_with_an_error_event(
    gateway: GatewayProcess, openai_fake: FakeOpenAI, sdk: openai.OpenAI
) -> None:
    rid = request_id()
    openai_fake.inject("break", after=3)
    received: list[str] = []
    with (
        sdk.chat.completions.create(
            model="chat", messages=USER, stream=True, **with_id(rid)
        ) as stream,
        pytest.raises(openai.APIError) as error,
    ):
        for chunk in stream:
            received += words_of([chunk])
    # aiohttp drops what it had buffered but not yet handed over when the connection is lost,
    # so the last events before a drop may be missing; none may be invented or reordered.
    assert received == WORDS[: len(received)]
    assert len(received) <= 3
    assert "dropped the connection" in error.value.message
    event = usage_event(gateway, rid)
    assert event["status"] == 502
    assert event["estimated"] is True
    assert (event["completion_tokens"] > 0) == bool(received)


def test_broken_streams_count_towards_cooldown(
    gateway: GatewayProcess, openai_fake: FakeOpenAI, sdk: openai.OpenAI
) -> None:
    openai_fake.inject("break", times=2, after=1)
    for _ in range(2):
        with (
            sdk.chat.completions.create(model="fragile", messages=USER, stream=True) as stream,
            pytest.raises(openai.APIError),
        ):
            list(stream)
    assert ready(gateway)["endpoints"]["fragile"]["cooled_down"] == ["fragile/0"]


def test_a_client_leaving_mid_stream_cancels_the_upstream_and_frees_the_slot(
    gateway: GatewayProcess, openai_fake: FakeOpenAI, sdk: openai.OpenAI
) -> None:
    rid = request_id()
    openai_fake.inject("stall", after=2, seconds=30)
    with sdk.chat.completions.create(
        model="capped", messages=USER, stream=True, **with_id(rid)
    ) as stream:
        first = next(iter(stream))
        assert words_of([first]) == WORDS[:1]
    # Closing the SDK stream closed the connection: the gateway drops the upstream call...
    assert wait_until(lambda: openai_fake.cancelled == 1, timeout=3)
    assert usage_event(gateway, rid)["status"] == 499
    # ...and gives back the endpoint's only provisioned slot.
    answer = sdk.chat.completions.create(model="capped", messages=USER)
    assert answer.choices[0].message.content == HELLO_REPLY


def test_a_client_leaving_before_the_first_byte_cancels_the_upstream(
    gateway: GatewayProcess, openai_fake: FakeOpenAI
) -> None:
    rid = request_id()
    openai_fake.delay_all(10)
    with openai_client(gateway, timeout=0.5) as impatient, pytest.raises(openai.APITimeoutError):
        impatient.chat.completions.create(
            model="capped", messages=USER, stream=True, **with_id(rid)
        )
    assert wait_until(lambda: openai_fake.cancelled == 1, timeout=3)
    assert usage_event(gateway, rid)["status"] == 499
    openai_fake.delay_all(0)
    with openai_client(gateway) as client:
        assert client.chat.completions.create(model="capped", messages=USER).choices


def test_a_client_leaving_a_slow_non_streaming_call_cancels_the_upstream(
    gateway: GatewayProcess, openai_fake: FakeOpenAI
) -> None:
    openai_fake.delay_all(10)
    with openai_client(gateway, timeout=0.5) as impatient, pytest.raises(openai.APITimeoutError):
        impatient.chat.completions.create(model="capped", messages=USER)
    assert wait_until(lambda: openai_fake.cancelled == 1, timeout=3)
    openai_fake.delay_all(0)
    with openai_client(gateway) as client:
        assert client.chat.completions.create(model="capped", messages=USER).choices
