"""Token limits and budgets on LLM endpoints, through a real gateway and a fake upstream."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.fakes.openai_upstream import FakeOpenAI
from tests.gateway_process import GatewayProcess, run_gateway, write_config

KEY = "gw-llm-governance-key-0123456789abcdef"
BUDGET_KEY = "gw-llm-governance-budget-0123456789ab"


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture(scope="module")
def gateway(
    upstream: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    workdir: Path = tmp_path_factory.mktemp("llm-governance")
    digest = hashlib.sha256(KEY.encode()).hexdigest()
    budget_digest = hashlib.sha256(BUDGET_KEY.encode()).hexdigest()
    config = write_config(
        workdir,
        f"""
limits: {{default_max_tokens: 50}}
auth:
  keys:
    - {{id: tpm, sha256: "{digest}", limits: {{tokens_per_minute: 200}}}}
    - {{id: spender, sha256: "{budget_digest}", budget: {{usd_per_day: 0.01}}}}
endpoints:
  - name: chat
    type: foundation
    task: chat
    deployments: [{{api_base: "{upstream.base_url}", model: m}}]
    pricing: {{input_per_million: 1000, output_per_million: 1000}}
""",
    )
    with run_gateway(config, workdir=workdir) as process:
        yield process


def client(gateway: GatewayProcess, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0)


def test_token_limits_reserve_max_tokens_and_reconcile_to_actual_usage(
    gateway: GatewayProcess,
) -> None:
    sdk = client(gateway, KEY)
    message: list[ChatCompletionMessageParam] = [{"role": "user", "content": "two words"}]
    raw = sdk.chat.completions.with_raw_response.create(
        model="chat", messages=message, max_tokens=40
    )
    assert raw.headers["x-ratelimit-limit-tokens"] == "200"
    # reserved ~3 + 40 tokens, settled to the actual 8 + 3: the rest is refunded
    answered = 1
    while True:
        try:
            sdk.chat.completions.create(model="chat", messages=message, max_tokens=40)
            answered += 1
        except openai.RateLimitError as exc:
            assert exc.response.headers.get("retry-after")
            break
        assert answered < 100
    # 200 tokens a minute, each call really uses 11: far more than 200 / 43 calls fit
    assert answered >= 10


def test_a_request_larger_than_the_limit_is_refused_without_retry_after(
    gateway: GatewayProcess,
) -> None:
    with pytest.raises(openai.RateLimitError) as caught:
        client(gateway, KEY).chat.completions.create(
            model="chat", messages=[{"role": "user", "content": "x"}], max_tokens=5000
        )
    assert "retry-after" not in caught.value.response.headers
    assert "alone exceeds" in caught.value.message


def test_a_spent_budget_is_a_429_budget_exceeded(gateway: GatewayProcess) -> None:
    sdk = client(gateway, BUDGET_KEY)
    message: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello"}]
    # each call really costs 6 tokens at $1000 per million: $0.006 of the $0.01 a day
    first = sdk.chat.completions.with_raw_response.create(
        model="chat", messages=message, max_tokens=1
    )
    remaining = [float(first.headers["x-budget-remaining-usd"])]
    with pytest.raises(openai.RateLimitError) as caught:
        for _ in range(5):
            answer = sdk.chat.completions.with_raw_response.create(
                model="chat", messages=message, max_tokens=1
            )
            remaining.append(float(answer.headers["x-budget-remaining-usd"]))
    assert caught.value.code == "budget_exceeded"
    assert len(remaining) <= 2  # $0.01 buys at most two calls
    assert int(caught.value.response.headers["retry-after"]) > 0  # until midnight UTC


def test_usage_and_cost_reach_the_metrics(gateway: GatewayProcess) -> None:
    metrics = httpx.get(f"{gateway.url}/metrics").text
    assert 'gateway_tokens_total{endpoint="chat",kind="prompt",principal="tpm"}' in metrics
    assert 'gateway_cost_usd_total{endpoint="chat",principal="spender"}' in metrics
    assert 'gateway_budget_rejections_total{scope="key"} 1.0' in metrics
