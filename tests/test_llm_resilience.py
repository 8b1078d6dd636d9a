"""What the gateway does when upstreams misbehave: pass-through of their 4xx, retries, 502/504,
429 and Retry-After, provisioned capacity, fallbacks, cooldown and least-in-flight balancing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from tests.fakes.openai_upstream import FakeOpenAI
from tests.fakes.server import wait_until
from tests.gateway_process import GatewayProcess
from tests.llm_fixtures import (  # noqa: F401  (fixtures)
    HELLO_REPLY,
    UPSTREAM_KEY,
    USER,
    async_openai_client,
    clean_fakes_fixture,
    error_body,
    llm_gateway,
    openai_fake_b_fixture,
    openai_fake_fixture,
    ready,
    request_id,
    sdk_fixture,
    usage_event,
    with_id,
)

COOLDOWN_FAILURES = 2


@pytest.fixture(scope="module")
def gateway(
    openai_fake: FakeOpenAI, openai_fake_b: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    a, b = openai_fake.base_url, openai_fake_b.base_url
    endpoints = f"""
    - name: flaky
      type: foundation
      task: chat
      retries: 2
      deployments: [{{api_base: "{a}", model: up-flaky, api_key: {UPSTREAM_KEY}}}]
    - name: slow
      type: foundation
      task: chat
      timeout_s: 0.5
      retries: 1
      deployments: [{{api_base: "{a}", model: up-slow}}]
    - name: capped
      type: foundation
      task: chat
      retries: 0
      provisioned: {{max_concurrent: 1, queue_timeout_s: 0.2}}
      deployments: [{{api_base: "{a}", model: up-capped}}]
    - name: capped-spill
      type: foundation
      task: chat
      retries: 0
      provisioned: {{max_concurrent: 1, queue_timeout_s: 0.2}}
      fallbacks: [backup]
      deployments: [{{api_base: "{a}", model: up-capped}}]
    - name: primary
      type: foundation
      task: chat
      retries: 1
      fallbacks: [backup]
      deployments: [{{api_base: "{a}", model: up-primary}}]
    - name: backup
      type: foundation
      task: chat
      retries: 0
      deployments: [{{api_base: "{b}", model: up-backup}}]
    - name: pool
      type: foundation
      task: chat
      retries: 0
      deployments: [{{api_base: "{a}", model: up-pool}}, {{api_base: "{b}", model: up-pool}}]
    - name: cooling
      type: foundation
      task: chat
      retries: 3
      cooldown: {{failures: {COOLDOWN_FAILURES}, seconds: 300}}
      deployments: [{{api_base: "{a}", model: up-cool}}, {{api_base: "{b}", model: up-cool}}]
    """
    with llm_gateway(tmp_path_factory, endpoints) as process:
        yield process


# --- upstream errors ----------------------------------------------------------------------------


def test_an_upstream_400_is_passed_through_without_retry(
    gateway: GatewayProcess, openai_fake: FakeOpenAI, sdk: openai.OpenAI
) -> None:
    rid = request_id()
    openai_fake.inject("status", status=400, message="max_tokens is too large for this model")
    with pytest.raises(openai.BadRequestError) as error:
        sdk.chat.completions.create(model="flaky", messages=USER, **with_id(rid))
    assert error.value.status_code == 400
    assert error_body(error.value)["message"] == "max_tokens is too large for this model"
    assert error.value.type == "invalid_request_error"
    assert len(openai_fake.requests) == 1  # a client error is not retried
    event = usage_event(gateway, rid)
    assert (event["endpoint"], event["status"]) == ("flaky", 400)


def test_an_upstream_422_keeps_its_status(openai_fake: FakeOpenAI, sdk: openai.OpenAI) -> None:
    openai_fake.inject("status", status=422, message="unprocessable", error_type="invalid_value")
    with pytest.raises(openai.UnprocessableEntityError) as error:
        sdk.chat.completions.create(model="flaky", messages=USER)
    assert error.value.body == {
        "message": "unprocessable",
        "type": "invalid_value",
        "param": None,
        "code": "upstream_422",
    }


def test_an_upstream_500_is_retried_then_502(
    gateway: GatewayProcess, openai_fake: FakeOpenAI, sdk: openai.OpenAI
) -> None:
    rid = request_id()
    openai_fake.inject("status", times=3, status=500, message="the GPU caught fire")
    with pytest.raises(openai.APIStatusError) as error:
        sdk.chat.completions.create(model="flaky", messages=USER, **with_id(rid))
    assert error.value.status_code == 502
    assert "flaky" in error.value.message
    assert "the GPU caught fire" in error.value.message
    assert UPSTREAM_KEY not in error.value.response.text
    assert len(openai_fake.requests) == 3  # retries: 2
    event = usage_event(gateway, rid)
    assert (event["status"], event["prompt_tokens"], event["served"]) == (502, 0, "")
    # The faults are used up: the next call goes through.
    answer = sdk.chat.completions.create(model="flaky", messages=USER)
    assert answer.choices[0].message.content == HELLO_REPLY


def test_a_500_then_success_is_invisible_to_the_client(
    openai_fake: FakeOpenAI, sdk: openai.OpenAI
) -> None:
    openai_fake.inject("status", times=2, status=503)
    answer = sdk.chat.completions.create(model="flaky", messages=USER)
    assert answer.choices[0].message.content == HELLO_REPLY
    assert len(openai_fake.requests) == 3


def test_a_reset_connection_is_retried(openai_fake: FakeOpenAI, sdk: openai.OpenAI) -> None:
    openai_fake.inject("reset")
    answer = sdk.chat.completions.create(model="flaky", messages=USER)
    assert answer.choices[0].message.content == HELLO_REPLY
    assert len(openai_fake.requests) == 2


def test_a_malformed_upstream_body_is_502(openai_fake: FakeOpenAI, sdk: openai.OpenAI) -> None:
    openai_fake.inject("malformed", times=3)
    with pytest.raises(openai.APIStatusError) as error:
        sdk.chat.completions.create(model="flaky", messages=USER)
    assert error.value.status_code == 502
    assert "not JSON" in error.value.message
    assert len(openai_fake.requests) == 3


def test_a_body_cut_halfway_is_retried(openai_fake: FakeOpenAI, sdk: openai.OpenAI) -> None:
    openai_fake.inject("break")
    answer = sdk.chat.completions.create(model="flaky", messages=USER)
    assert answer.choices[0].message.content == HELLO_REPLY
    assert len(openai_fake.requests) == 2


def test_an_upstream_slower_than_timeout_is_504(
    gateway: GatewayProcess, openai_fake: FakeOpenAI, sdk: openai.OpenAI
) -> None:
    rid = request_id()
    openai_fake.inject("delay", times=2, seconds=3)
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as error:
        sdk.chat.completions.create(model="slow", messages=USER, **with_id(rid))
    assert error.value.status_code == 504
    assert error.value.type == "timeout"
    assert time.monotonic() - started < 2.5  # two 0.5 s attempts, not the upstream's 3 s
    assert len(openai_fake.requests) == 2
    # The gateway hung up on both: the upstream saw the calls cancelled.
    assert wait_until(lambda: openai_fake.cancelled == 2)
    assert usage_event(gateway, rid)["status"] == 504


def test_a_429_is_retried_after_its_retry_after(
    gateway: GatewayProcess, openai_fake: FakeOpenAI, sdk: openai.OpenAI
) -> None:
    rid = request_id()
    openai_fake.inject("status", status=429, retry_after="1")
    started = time.monotonic()
    answer = sdk.chat.completions.create(model="flaky", messages=USER, **with_id(rid))
    elapsed = time.monotonic() - started
    assert answer.choices[0].message.content == HELLO_REPLY
    assert len(openai_fake.requests) == 2
    assert elapsed >= 0.95  # the upstream's Retry-After, not the ~0.1 s default backoff
    # Waiting on the upstream is not the gateway's overhead, retries included.
    assert usage_event(gateway, rid)["overhead_ms"] < 100


def test_a_persistent_429_is_a_rate_limit_error_with_retry_after(
    gateway: GatewayProcess, openai_fake: FakeOpenAI, sdk: openai.OpenAI
) -> None:
    rid = request_id()
    openai_fake.inject("status", times=2, status=429, retry_after="0")
    openai_fake.inject("status", status=429, retry_after="7", message="slow down")
    with pytest.raises(openai.RateLimitError) as error:
        sdk.chat.completions.create(model="flaky", messages=USER, **with_id(rid))
    assert error.value.status_code == 429
    assert "slow down" in error.value.message
    assert error.value.response.headers["retry-after"] == "7"  # the upstream's last word
    assert len(openai_fake.requests) == 3
    assert usage_event(gateway, rid)["status"] == 429


def test_provisioned_capacity_full_is_429_with_retry_after(
    gateway: GatewayProcess, openai_fake: FakeOpenAI, sdk: openai.OpenAI
) -> None:
    openai_fake.inject("delay", seconds=1.0)
    rid = request_id()
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(sdk.chat.completions.create, model="capped", messages=USER)
        assert wait_until(lambda: openai_fake.in_flight == 1)
        with pytest.raises(openai.RateLimitError) as error:
            sdk.chat.completions.create(model="capped", messages=USER, **with_id(rid))
        assert first.result().choices[0].message.content == HELLO_REPLY
    assert error.value.response.headers["retry-after"] == "1"
    assert "capped" in error.value.message
    assert len(openai_fake.requests) == 1  # the refused call never went upstream
    assert usage_event(gateway, rid)["status"] == 429
    # The slot was given back when the first call ended.
    assert sdk.chat.completions.create(model="capped", messages=USER).choices


def test_a_full_endpoint_spills_over_to_its_fallback(
    openai_fake: FakeOpenAI, openai_fake_b: FakeOpenAI, sdk: openai.OpenAI
) -> None:
    openai_fake.inject("delay", seconds=1.0)
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(sdk.chat.completions.create, model="capped-spill", messages=USER)
        assert wait_until(lambda: openai_fake.in_flight == 1)
        spilled = sdk.chat.completions.with_raw_response.create(model="capped-spill", messages=USER)
        assert first.result().choices[0].message.content == HELLO_REPLY
    assert spilled.headers["x-served-model"].endswith(";fallback")
    assert spilled.headers["x-served-model"].startswith("backup/")
    assert len(openai_fake_b.requests) == 1


def test_provisioned_calls_queue_briefly(openai_fake: FakeOpenAI, sdk: openai.OpenAI) -> None:
    openai_fake.inject("delay", seconds=0.05)  # shorter than queue_timeout_s: the second waits
    with ThreadPoolExecutor(2) as pool:
        calls = [
            pool.submit(sdk.chat.completions.create, model="capped", messages=USER)
            for _ in range(2)
        ]
        answers = [call.result() for call in calls]
    assert [a.choices[0].message.content for a in answers] == [HELLO_REPLY] * 2


# --- fallbacks ----------------------------------------------------------------------------------


def test_retries_then_the_fallback_answers(
    gateway: GatewayProcess,
    openai_fake: FakeOpenAI,
    openai_fake_b: FakeOpenAI,
    sdk: openai.OpenAI,
) -> None:
    rid = request_id()
    # retries: 1, so both attempts fail, slowly: that time is the upstream's, not overhead
    openai_fake.delay_all(0.15)
    openai_fake.inject("status", times=2, status=500)
    raw = sdk.chat.completions.with_raw_response.create(
        model="primary", messages=USER, **with_id(rid)
    )
    assert raw.parse().choices[0].message.content == HELLO_REPLY
    assert raw.headers["x-served-model"] == "backup/0;fallback"
    assert len(openai_fake.requests) == 2
    assert [r.body["model"] for r in openai_fake_b.requests] == ["up-backup"]
    event = usage_event(gateway, rid)
    assert event["fallback_used"] is True
    # the endpoint called, and the one that answered
    assert (event["endpoint"], event["served_endpoint"], event["served"], event["status"]) == (
        "primary",
        "backup",
        "backup/0",
        200,
    )
    assert (event["prompt_tokens"], event["completion_tokens"]) == (6, 4)
    assert event["overhead_ms"] < 100


def test_a_streaming_call_falls_back_too(
    openai_fake: FakeOpenAI, openai_fake_b: FakeOpenAI, sdk: openai.OpenAI
) -> None:
    openai_fake.inject("reset", times=2)
    with sdk.chat.completions.with_streaming_response.create(
        model="primary", messages=USER, stream=True
    ) as response:
        assert response.headers["x-served-model"] == "backup/0;fallback"
        text = "".join(
            chunk.choices[0].delta.content or "" for chunk in response.parse() if chunk.choices
        )
    assert text == HELLO_REPLY
    assert len(openai_fake_b.requests) == 1


def test_no_fallback_for_an_upstream_4xx(
    openai_fake: FakeOpenAI, openai_fake_b: FakeOpenAI, sdk: openai.OpenAI
) -> None:
    openai_fake.inject("status", status=400, message="bad tool schema")
    with pytest.raises(openai.BadRequestError, match="bad tool schema"):
        sdk.chat.completions.create(model="primary", messages=USER)
    assert openai_fake_b.requests == []


def test_when_the_fallback_fails_too_the_last_error_is_returned(
    gateway: GatewayProcess,
    openai_fake: FakeOpenAI,
    openai_fake_b: FakeOpenAI,
    sdk: openai.OpenAI,
) -> None:
    rid = request_id()
    openai_fake.inject("status", times=2, status=500)
    openai_fake_b.inject("status", status=503, message="backup is down")
    with pytest.raises(openai.APIStatusError) as error:
        sdk.chat.completions.create(model="primary", messages=USER, **with_id(rid))
    assert error.value.status_code == 502
    assert "backup is down" in error.value.message
    event = usage_event(gateway, rid)
    assert (event["status"], event["fallback_used"]) == (502, False)


# --- deployments: cooldown and balancing --------------------------------------------------------


def test_a_failing_deployment_is_cooled_down(
    gateway: GatewayProcess,
    openai_fake: FakeOpenAI,
    openai_fake_b: FakeOpenAI,
    sdk: openai.OpenAI,
) -> None:
    openai_fake.inject("reset", times=1000)  # deployment 0 drops every connection
    assert ready(gateway)["endpoints"]["cooling"]["cooled_down"] == []
    # Calls are spread at random until deployment 0 has failed `failures` times in a row;
    # each failure is retried, and the other deployment answers.
    for _ in range(60):
        answer = sdk.chat.completions.create(model="cooling", messages=USER)
        assert answer.choices[0].message.content == HELLO_REPLY
        if len(openai_fake.requests) == COOLDOWN_FAILURES:
            break
    assert len(openai_fake.requests) == COOLDOWN_FAILURES
    assert ready(gateway)["endpoints"]["cooling"]["cooled_down"] == ["cooling/0"]

    before_b = len(openai_fake_b.requests)
    for _ in range(10):
        assert sdk.chat.completions.create(model="cooling", messages=USER).choices
    assert len(openai_fake.requests) == COOLDOWN_FAILURES  # skipped while cooling down
    assert len(openai_fake_b.requests) == before_b + 10


def test_least_in_flight_balances_concurrent_calls(
    gateway: GatewayProcess, openai_fake: FakeOpenAI, openai_fake_b: FakeOpenAI
) -> None:
    openai_fake.delay_all(0.8)  # long enough for all six calls to be in flight together
    openai_fake_b.delay_all(0.8)

    async def burst() -> list[str | None]:
        async with async_openai_client(gateway) as client:
            answers = await asyncio.gather(
                *(client.chat.completions.create(model="pool", messages=USER) for _ in range(6))
            )
        return [answer.choices[0].message.content for answer in answers]

    assert asyncio.run(burst()) == [HELLO_REPLY] * 6
    # Each call went to the deployment with fewer calls in flight: an even split.
    assert (len(openai_fake.requests), len(openai_fake_b.requests)) == (3, 3)


@pytest.mark.parametrize("status", [401, 403])
def test_an_upstream_refusing_the_gateways_credentials_is_a_502_not_the_callers_fault(
    gateway: GatewayProcess, openai_fake: FakeOpenAI, sdk: openai.OpenAI, status: int
) -> None:
    rid = request_id()
    openai_fake.inject("status", status=status, message="Incorrect API key provided: sk-fa****ream")
    with pytest.raises(openai.APIStatusError) as error:
        sdk.chat.completions.create(model="flaky", messages=USER, **with_id(rid))
    assert error.value.status_code == 502
    assert "refused the gateway's credentials" in error.value.message
    assert "sk-fa" not in error.value.response.text  # the upstream's words may quote the key
    assert len(openai_fake.requests) == 1  # not retried: it would be refused again
    assert usage_event(gateway, rid)["status"] == 502
