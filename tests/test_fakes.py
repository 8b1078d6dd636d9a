"""The fake upstreams (`tests/fakes/`) checked with the real OpenAI and Anthropic SDKs.

If an SDK can talk to a fake, the gateway's tests can trust what the fake says on the wire.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import httpx2
import openai
import pytest
from anthropic.types import MessageParam, TextBlockParam
from openai.types.chat import ChatCompletionContentPartTextParam, ChatCompletionMessageParam

from tests.fakes.anthropic_upstream import FakeAnthropic
from tests.fakes.openai_upstream import FakeOpenAI, embedding_for
from tests.fakes.server import wait_until
from tests.gateway_process import free_port
from tests.llm_fixtures import text_of

USER: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello big world"}]
CLAUDE_USER: list[MessageParam] = [{"role": "user", "content": "hello big world"}]  # the same


@pytest.fixture(scope="module")
def openai_server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture(scope="module")
def anthropic_server() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as fake:
        yield fake


@pytest.fixture
def fake(openai_server: FakeOpenAI) -> FakeOpenAI:
    openai_server.reset()
    return openai_server


@pytest.fixture
def claude_fake(anthropic_server: FakeAnthropic) -> FakeAnthropic:
    anthropic_server.reset()
    return anthropic_server


@pytest.fixture
def client(fake: FakeOpenAI) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=fake.base_url, api_key="sk-test", max_retries=0, timeout=5) as sdk:
        yield sdk


@pytest.fixture
def claude(claude_fake: FakeAnthropic) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(
        base_url=claude_fake.base_url, api_key="ak-test", max_retries=0, timeout=5
    ) as sdk:
        yield sdk


def sse_payloads(text: str) -> list[str]:
    assert text.endswith("\n\n")
    return [event.removeprefix("data: ") for event in text.split("\n\n")[:-1]]


# ----- OpenAI: chat completions -----


def test_chat_completion(fake: FakeOpenAI, client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "system", "content": "be brief"}, *USER],
    )
    assert completion.object == "chat.completion"
    assert completion.id.startswith("chatcmpl-")
    assert completion.model == "gpt-4o-mini"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content == "echo: hello big world"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (2 + 3 + 6, 4)
    assert completion.usage.total_tokens == 15
    path, headers, body = fake.requests[-1]
    assert path == "/v1/chat/completions"
    assert headers["authorization"] == "Bearer sk-test"
    assert body["messages"][1] == USER[0]


def test_chat_content_parts_and_max_tokens(client: openai.OpenAI) -> None:
    parts: list[ChatCompletionContentPartTextParam] = [
        {"type": "text", "text": "one two"},
        {"type": "text", "text": "three  four"},
    ]
    completion = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": parts}], max_tokens=3
    )
    assert completion.choices[0].message.content == "echo: one two"
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (7, 3)
    completion = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": parts}], max_completion_tokens=2
    )
    assert completion.choices[0].message.content == "echo: one"


@pytest.mark.parametrize("include_usage", [False, True])
def test_chat_stream(client: openai.OpenAI, include_usage: bool) -> None:
    options: dict[str, Any] = {"stream_options": {"include_usage": True}} if include_usage else {}
    with client.chat.completions.create(model="m", messages=USER, stream=True, **options) as stream:
        chunks = list(stream)
    assert all(chunk.object == "chat.completion.chunk" for chunk in chunks)
    assert len({chunk.id for chunk in chunks}) == 1
    words = [chunk for chunk in chunks if chunk.choices and chunk.choices[0].delta.content]
    assert [chunk.choices[0].delta.content for chunk in words] == [
        "echo:",
        " hello",
        " big",
        " world",
    ]
    assert words[0].choices[0].delta.role == "assistant"
    assert chunks[len(words)].choices[0].finish_reason == "stop"
    if include_usage:
        assert len(chunks) == len(words) + 2
        assert chunks[-1].choices == []
        assert chunks[-1].usage is not None
        assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (6, 4)
    else:
        assert len(chunks) == len(words) + 1
        assert all(chunk.usage is None for chunk in chunks)


@pytest.mark.parametrize("include_usage", [False, True])
def test_chat_stream_wire_format(fake: FakeOpenAI, include_usage: bool) -> None:
    body = {"model": "m", "messages": USER, "stream": True, "max_tokens": 2}
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    response = httpx.post(f"{fake.base_url}/chat/completions", json=body)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream"
    *payloads, done = sse_payloads(response.text)
    assert done == "[DONE]"
    chunks = [json.loads(payload) for payload in payloads]
    assert [chunk["choices"][0]["finish_reason"] for chunk in chunks[:3]] == [None, None, "length"]
    if include_usage:
        assert all("usage" in chunk and chunk["usage"] is None for chunk in chunks[:-1])
        assert chunks[-1]["choices"] == []
        assert chunks[-1]["usage"] == {
            "prompt_tokens": 6,
            "completion_tokens": 2,
            "total_tokens": 8,
        }
    else:
        assert len(chunks) == 3
        assert all("usage" not in chunk for chunk in chunks)


def test_invalid_request_and_unknown_path(fake: FakeOpenAI, client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="m", messages=[])
    assert bad.value.body is not None
    response = httpx.post(f"{fake.base_url}/nope", json={})
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert fake.requests[-1].path == "/v1/nope"


def test_api_key_is_enforced_when_set() -> None:
    with FakeOpenAI(api_key="right") as fake:
        wrong = openai.OpenAI(base_url=fake.base_url, api_key="wrong", max_retries=0)
        with wrong, pytest.raises(openai.AuthenticationError) as denied:
            wrong.models.list()
        assert denied.value.code == "invalid_api_key"
        with openai.OpenAI(base_url=fake.base_url, api_key="right", max_retries=0) as sdk:
            assert [model.id for model in sdk.models.list()] == list(FakeOpenAI.default_models)


# ----- OpenAI: legacy completions, embeddings, models -----


def test_completions(client: openai.OpenAI) -> None:
    completion = client.completions.create(model="gpt-3.5-turbo-instruct", prompt="say  this")
    assert completion.object == "text_completion"
    assert completion.choices[0].text == "echo: say this"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (2, 3)
    several = client.completions.create(model="m", prompt=["a", "b c"], max_tokens=2)
    assert [(c.index, c.text, c.finish_reason) for c in several.choices] == [
        (0, "echo: a", "stop"),
        (1, "echo: b", "length"),
    ]


def test_completions_stream(client: openai.OpenAI) -> None:
    with client.completions.create(
        model="m", prompt="x y", stream=True, stream_options={"include_usage": True}
    ) as stream:
        chunks = list(stream)
    assert "".join(chunk.choices[0].text for chunk in chunks if chunk.choices) == "echo: x y"
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == 2 + 3


def test_embeddings(fake: FakeOpenAI, client: openai.OpenAI) -> None:
    floats = client.embeddings.create(model="e", input="hi there", encoding_format="float")
    assert floats.data[0].embedding == embedding_for("hi there")
    assert len(floats.data[0].embedding) == 8
    assert floats.usage.prompt_tokens == floats.usage.total_tokens == 2
    default = client.embeddings.create(model="e", input=["hi there", "yo"])  # SDK asks base64
    assert fake.requests[-1].body["encoding_format"] == "base64"
    assert [item.embedding for item in default.data] == [
        embedding_for("hi there"),
        embedding_for("yo"),
    ]
    assert default.usage.prompt_tokens == 3
    wide = client.embeddings.create(model="e", input="z", dimensions=20, encoding_format="float")
    assert wide.data[0].embedding == embedding_for("z", 20)
    assert embedding_for("a") != embedding_for("b")


def test_models(client: openai.OpenAI) -> None:
    models = client.models.list()
    assert [model.id for model in models] == list(FakeOpenAI.default_models)
    assert all(model.object == "model" for model in models)


# ----- OpenAI: faults -----


def test_status_faults(fake: FakeOpenAI, client: openai.OpenAI) -> None:
    fake.inject("status", status=500)
    fake.inject("status", status=429, retry_after="0.2", message="slow down")
    with pytest.raises(openai.InternalServerError) as server_error:
        client.chat.completions.create(model="m", messages=USER)
    assert server_error.value.body == {
        "message": "Injected fault: HTTP 500",
        "type": "server_error",
        "param": None,
        "code": None,
    }
    with pytest.raises(openai.RateLimitError) as limited:
        client.chat.completions.create(model="m", messages=USER)
    assert limited.value.response.headers["retry-after"] == "0.2"
    assert limited.value.message == "Error code: 429 - slow down"
    assert limited.value.code == "rate_limit_exceeded"
    assert client.chat.completions.create(model="m", messages=USER).choices[0].message.content
    assert len(fake.requests) == 3


def test_faults_are_fifo_counted_and_path_filtered(fake: FakeOpenAI, client: openai.OpenAI) -> None:
    fake.inject("status", times=2, path="/v1/embeddings", status=503)
    fake.inject("status", status=400)
    assert fake.faults_pending == 3
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="m", messages=USER)
    client.chat.completions.create(model="m", messages=USER)
    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            client.embeddings.create(model="e", input="x")
    client.embeddings.create(model="e", input="x")
    assert fake.faults_pending == 0
    with pytest.raises(ValueError, match="unknown fault kind"):
        fake.inject("explode")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs option"):
        fake.inject("status")
    with pytest.raises(ValueError, match="takes no option"):
        fake.inject("delay", seconds=1, status=500)


def test_reset_is_a_connection_error(fake: FakeOpenAI, client: openai.OpenAI) -> None:
    fake.inject("reset")
    with pytest.raises(openai.APIConnectionError):
        client.chat.completions.create(model="m", messages=USER)
    assert fake.requests[-1].path == "/v1/chat/completions"
    assert fake.cancelled == 0
    assert client.chat.completions.create(model="m", messages=USER).choices


def test_delay_times_out_and_counts_the_cancellation(fake: FakeOpenAI) -> None:
    fake.inject("delay", seconds=0.5)
    sdk = openai.OpenAI(base_url=fake.base_url, api_key="x", max_retries=0, timeout=0.1)
    with sdk, pytest.raises(openai.APITimeoutError):
        sdk.chat.completions.create(model="m", messages=USER)
    assert wait_until(lambda: fake.cancelled == 1)
    assert fake.in_flight == 0


def test_delay_then_normal_answer(fake: FakeOpenAI, client: openai.OpenAI) -> None:
    fake.inject("delay", seconds=0.1)
    started = time.monotonic()
    assert client.models.list().data
    assert time.monotonic() - started >= 0.1


def test_stall_stops_a_stream_until_the_client_leaves(fake: FakeOpenAI) -> None:
    fake.inject("stall", after=2)
    received: list[str] = []
    sdk = openai.OpenAI(base_url=fake.base_url, api_key="x", max_retries=0, timeout=0.2)
    with sdk, pytest.raises(openai.APITimeoutError):  # wraps httpx2.ReadTimeout mid-stream
        stream = sdk.chat.completions.create(model="m", messages=USER, stream=True)
        with stream:
            received.extend(chunk.choices[0].delta.content or "" for chunk in stream)
    assert received == ["echo:", " hello"]
    assert wait_until(lambda: fake.cancelled == 1 and fake.in_flight == 0)


def test_stall_with_short_pause_resumes(fake: FakeOpenAI, client: openai.OpenAI) -> None:
    fake.inject("stall", after=1, seconds=0.05)
    with client.chat.completions.create(model="m", messages=USER, stream=True) as stream:
        text = "".join(chunk.choices[0].delta.content or "" for chunk in stream)
    assert text == "echo: hello big world"


def test_break_drops_a_stream_midway(fake: FakeOpenAI, client: openai.OpenAI) -> None:
    fake.inject("break", after=3)
    received: list[str] = []
    with (
        pytest.raises(openai.APIConnectionError),  # wraps httpx2.RemoteProtocolError
        client.chat.completions.create(model="m", messages=USER, stream=True) as stream,
    ):
        received.extend(chunk.choices[0].delta.content or "" for chunk in stream)
    assert received == ["echo:", " hello", " big"]
    assert fake.cancelled == 0


def test_break_truncates_a_json_body(fake: FakeOpenAI, client: openai.OpenAI) -> None:
    fake.inject("break")
    with pytest.raises(openai.APIConnectionError):
        client.chat.completions.create(model="m", messages=USER)


def test_malformed_body(fake: FakeOpenAI, client: openai.OpenAI) -> None:
    fake.inject("malformed")
    response = httpx.post(
        f"{fake.base_url}/chat/completions", json={"model": "m", "messages": USER}
    )
    assert (response.status_code, response.headers["content-type"]) == (200, "application/json")
    with pytest.raises(json.JSONDecodeError):
        response.json()
    fake.inject("malformed", body="<html>oops</html>")
    with pytest.raises(json.JSONDecodeError):  # the SDK lets it through
        client.chat.completions.create(model="m", messages=USER)


def test_no_usage(fake: FakeOpenAI, client: openai.OpenAI) -> None:
    fake.inject("no_usage", times=2)
    assert client.chat.completions.create(model="m", messages=USER).usage is None
    with client.chat.completions.create(
        model="m", messages=USER, stream=True, stream_options={"include_usage": True}
    ) as stream:
        chunks = list(stream)
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(chunk.usage is None for chunk in chunks)


def test_delay_all_and_in_flight(fake: FakeOpenAI) -> None:
    fake.delay_all(0.5)

    def call() -> None:
        with openai.OpenAI(base_url=fake.base_url, api_key="x", max_retries=0) as sdk:
            sdk.chat.completions.create(model="m", messages=USER)

    threads = [threading.Thread(target=call) for _ in range(3)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    assert wait_until(lambda: fake.in_flight == 3)  # all three held by the delay at once
    for thread in threads:
        thread.join()
    assert time.monotonic() - started >= 0.5
    assert fake.in_flight == 0
    assert len(fake.requests) == 3


def test_standalone_process() -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.openai_upstream", "--port", str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert (
            process.stdout.readline().strip()
            == f"FakeOpenAI listening on http://127.0.0.1:{port}/v1"
        )
        with openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x") as sdk:
            reply = sdk.chat.completions.create(model="m", messages=USER)
        assert reply.choices[0].message.content == "echo: hello big world"
    finally:
        process.terminate()
        assert process.wait(timeout=5) == 0
        if process.stdout is not None:
            process.stdout.close()


# ----- Anthropic -----


def test_anthropic_message(claude_fake: FakeAnthropic, claude: anthropic.Anthropic) -> None:
    message = claude.messages.create(
        model="claude-x", max_tokens=100, system="be terse", messages=CLAUDE_USER
    )
    assert message.id.startswith("msg_")
    assert (message.type, message.role, message.model) == ("message", "assistant", "claude-x")
    assert [(block.type, text_of(block)) for block in message.content] == [
        ("text", "echo: hello big world")
    ]
    assert (message.stop_reason, message.stop_sequence) == ("end_turn", None)
    assert (message.usage.input_tokens, message.usage.output_tokens) == (2 + 3 + 3, 4)
    path, headers, body = claude_fake.requests[-1]
    assert path == "/v1/messages"
    assert headers["authorization"] == "Bearer ak-test"  # anthropic SDK 2.x; 1.x sent x-api-key
    assert headers["anthropic-version"]
    assert body["system"] == "be terse"


def test_anthropic_max_tokens_and_blocks(claude: anthropic.Anthropic) -> None:
    content: list[TextBlockParam] = [{"type": "text", "text": "a b"}, {"type": "text", "text": "c"}]
    message = claude.messages.create(
        model="m", max_tokens=2, messages=[{"role": "user", "content": content}]
    )
    assert text_of(message.content[0]) == "echo: a"
    assert message.stop_reason == "max_tokens"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (6, 2)


def test_anthropic_stream(claude_fake: FakeAnthropic, claude: anthropic.Anthropic) -> None:
    with claude.messages.stream(model="m", max_tokens=50, messages=CLAUDE_USER) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "echo: hello big world"
    assert text_of(final.content[0]) == text
    assert final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (6, 4)
    assert claude_fake.requests[-1].body["stream"] is True


def test_anthropic_stream_wire_format(claude_fake: FakeAnthropic) -> None:
    response = httpx.post(
        f"{claude_fake.url}/v1/messages",
        headers={"anthropic-version": "2023-06-01", "x-api-key": "k"},
        json={"model": "m", "max_tokens": 1, "stream": True, "messages": USER},
    )
    assert response.headers["content-type"] == "text/event-stream"
    events = [event.split("\n") for event in response.text.split("\n\n")[:-1]]
    names = [lines[0].removeprefix("event: ") for lines in events]
    assert names == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    datas = [json.loads(lines[1].removeprefix("data: ")) for lines in events]
    assert [data["type"] for data in datas] == names
    assert datas[0]["message"]["usage"]["input_tokens"] == 6
    assert datas[5]["delta"]["stop_reason"] == "max_tokens"
    assert datas[5]["usage"] == {"output_tokens": 1}


def test_anthropic_errors(claude_fake: FakeAnthropic, claude: anthropic.Anthropic) -> None:
    claude_fake.inject("status", status=529)
    claude_fake.inject("status", status=429, retry_after="0.1")
    with pytest.raises(anthropic.InternalServerError) as overloaded:
        claude.messages.create(model="m", max_tokens=5, messages=CLAUDE_USER)
    assert overloaded.value.status_code == 529
    assert isinstance(overloaded.value.body, dict)
    assert overloaded.value.body["type"] == "error"
    assert overloaded.value.body["error"]["type"] == "overloaded_error"
    with pytest.raises(anthropic.RateLimitError) as limited:
        claude.messages.create(model="m", max_tokens=5, messages=CLAUDE_USER)
    assert limited.value.response.headers["retry-after"] == "0.1"
    with pytest.raises(anthropic.BadRequestError):
        claude.messages.create(model="m", max_tokens=5, messages=[])
    missing_version = httpx.post(
        f"{claude_fake.url}/v1/messages", json={"model": "m", "max_tokens": 5, "messages": USER}
    )
    assert missing_version.status_code == 400
    assert missing_version.json()["error"]["type"] == "invalid_request_error"


def test_anthropic_stream_faults(claude_fake: FakeAnthropic, claude: anthropic.Anthropic) -> None:
    claude_fake.inject("break", after=4)
    pieces: list[str] = []
    with (
        pytest.raises(
            httpx2.RemoteProtocolError
        ),  # anthropic 2.x's transport, unwrapped mid-stream
        claude.messages.stream(model="m", max_tokens=50, messages=CLAUDE_USER) as stream,
    ):
        pieces.extend(stream.text_stream)
    assert pieces == ["echo:"]  # events: message_start, content_block_start, ping, 1st delta
    claude_fake.inject("no_usage")
    url, headers = f"{claude_fake.url}/v1/messages", {"anthropic-version": "2023-06-01"}
    body = {"model": "m", "max_tokens": 5, "messages": USER}
    without = httpx.post(url, headers=headers, json=body).json()
    assert without["content"][0]["text"] == "echo: hello big world"
    assert "usage" not in without
    assert "usage" in httpx.post(url, headers=headers, json=body).json()


def test_anthropic_api_key_and_models() -> None:
    with FakeAnthropic(api_key="good", models=["claude-a"]) as fake:
        bad = anthropic.Anthropic(base_url=fake.base_url, api_key="bad", max_retries=0)
        with bad, pytest.raises(anthropic.AuthenticationError):
            bad.messages.create(model="m", max_tokens=5, messages=CLAUDE_USER)
        with anthropic.Anthropic(base_url=fake.base_url, api_key="good", max_retries=0) as sdk:
            assert [model.id for model in sdk.models.list()] == ["claude-a"]
