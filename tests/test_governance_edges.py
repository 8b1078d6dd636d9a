"""Governance at the edges, as a hostile key holder would probe it: input that cannot be
forwarded, ledger ids chosen by clients, abandoned calls, request shapes that multiply tokens,
fallbacks past their own limits, wrong-typed Anthropic blocks, labels from odd paths."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from gateway.auth.keys import key_digest
from tests.fakes.openai_upstream import FakeOpenAI
from tests.gateway_process import GatewayProcess, run_gateway, write_config
from tests.llm_fixtures import (  # noqa: F401  (fixtures)
    ADMIN_KEY,
    APP_KEY,
    USER,
    clean_fakes_fixture,
    openai_fake_b_fixture,
    openai_fake_fixture,
    usage_event,
)

SLOT_KEY = "gw-edges-slot-key-0123456789abcdef0"
TPM_KEY = "gw-edges-tpm-key-0123456789abcdef01"
IDS_KEY = "gw-edges-ids-key-0123456789abcdef01"
TPM_LIMIT = 1500


@pytest.fixture(scope="module")
def gateway(
    openai_fake: FakeOpenAI, openai_fake_b: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    a, b = openai_fake.base_url, openai_fake_b.base_url
    workdir = tmp_path_factory.mktemp("edges")
    config = write_config(
        workdir,
        f"""
limits: {{default_max_tokens: 50}}
server: {{access: {{metrics: key}}}}
auth:
  keys:
    - {{id: app, sha256: "{key_digest(APP_KEY)}", endpoints: [chat, primary, guarded, limited-backup]}}
    - {{id: admin, sha256: "{key_digest(ADMIN_KEY)}", roles: [user, admin]}}
    - {{id: slot, sha256: "{key_digest(SLOT_KEY)}", limits: {{max_concurrent: 1}}}}
    - {{id: tpm, sha256: "{key_digest(TPM_KEY)}", limits: {{tokens_per_minute: {TPM_LIMIT}}}}}
    - {{id: ids, sha256: "{key_digest(IDS_KEY)}"}}
endpoints:
  - name: chat
    type: foundation
    task: chat
    retries: 0
    deployments: [{{api_base: "{a}", model: up-chat}}]
    pricing: {{input_per_million: 1000, output_per_million: 2000}}
  - name: primary
    type: foundation
    task: chat
    retries: 0
    fallbacks: [limited-backup, closed-backup]
    deployments: [{{api_base: "{a}", model: up-primary}}]
  - name: guarded
    type: foundation
    task: chat
    retries: 0
    fallbacks: [closed-backup]
    deployments: [{{api_base: "{a}", model: up-guarded}}]
  - name: limited-backup
    type: foundation
    task: chat
    retries: 0
    limits: {{requests_per_minute: 1}}
    deployments: [{{api_base: "{b}", model: up-limited}}]
  - name: closed-backup
    type: foundation
    task: chat
    retries: 0
    deployments: [{{api_base: "{b}", model: up-closed}}]
""",
    )
    with run_gateway(config, workdir=workdir) as process:
        yield process


def post(
    gateway: GatewayProcess, path: str, body: Any, key: str = APP_KEY, **headers: str
) -> httpx.Response:
    return httpx.post(
        f"{gateway.url}{path}",
        json=body,
        headers={"authorization": f"Bearer {key}", **headers},
        timeout=15,
    )


def nested(depth: int) -> Any:
    value: Any = "bottom"
    for _ in range(depth):
        value = [value]
    return value


def chat(**extra: Any) -> dict[str, Any]:
    return {"model": "chat", "messages": USER, **extra}


# --- 1. what cannot be forwarded is refused before anything is counted -----------------------------


def test_input_that_cannot_be_forwarded_is_a_400_that_holds_no_slot(
    gateway: GatewayProcess,
) -> None:
    deep = nested(300)  # orjson reads 1,024 levels but writes only 254
    bodies = {
        "/v1/chat/completions": chat(metadata={"deep": deep}),
        "/serving-endpoints/chat/invocations": {"messages": USER, "metadata": deep},
        "/v1/messages": {
            "model": "chat",
            "max_tokens": 10,
            "messages": USER,
            "tools": [{"name": "t", "input_schema": {"type": "object", "x": deep}}],
        },
    }
    for path, body in bodies.items():
        for _ in range(2):
            response = post(gateway, path, body, SLOT_KEY)
            assert response.status_code == 400, (path, response.text)
            assert "cannot be forwarded" in response.text
    # the key's one concurrency slot is free: nothing was admitted and left behind
    assert post(gateway, "/v1/chat/completions", chat(), SLOT_KEY).status_code == 200


# --- 2. the ledger's key is the gateway's --------------------------------------------------------


def test_a_client_request_id_is_stored_beside_the_ledger_key_never_as_it(
    gateway: GatewayProcess,
) -> None:
    rid = f"dup-{uuid.uuid4().hex[:12]}"
    answers = [
        post(gateway, "/v1/chat/completions", chat(), IDS_KEY, **{"x-request-id": rid})
        for _ in range(3)
    ]
    assert all(answer.status_code == 200 for answer in answers)
    assert all(answer.headers["x-request-id"] == rid for answer in answers)
    ours = {answer.headers["x-gateway-request-id"] for answer in answers}
    assert len(ours) == 3
    events = httpx.get(
        f"{gateway.url}/admin/usage/recent?limit=1000",
        headers={"authorization": f"Bearer {ADMIN_KEY}"},
    ).json()["data"]
    mine = [e for e in events if e["client_request_id"] == rid]
    assert {e["request_id"] for e in mine} == ours
    # and in the durable ledger: three billed calls are three rows
    deadline = time.monotonic() + 10
    while True:
        rows = httpx.get(
            f"{gateway.url}/admin/usage?group_by=principal",
            headers={"authorization": f"Bearer {ADMIN_KEY}"},
        ).json()["data"]
        counted = [r["requests"] for r in rows if r["principal"] == "ids"]
        if counted == [3] or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert counted == [3]
    assert [r["principal_kind"] for r in rows if r["principal"] == "ids"] == ["key"]


def test_an_oversized_or_binary_client_request_id_is_refused(gateway: GatewayProcess) -> None:
    for bad in ("x" * 129, "tab\there"):
        response = post(gateway, "/v1/chat/completions", chat(), IDS_KEY, **{"x-request-id": bad})
        assert response.status_code == 400, response.text
        assert response.json()["error"]["message"].startswith("x-request-id must")
        assert response.headers["x-request-id"] != bad  # never echoed


# --- 3. an abandoned call is billed the prompt the upstream received --------------------------------


def test_an_abandoned_call_is_billed_its_prompt(
    gateway: GatewayProcess, openai_fake: FakeOpenAI
) -> None:
    openai_fake.delay_all(3.0)
    rid = f"gone-{uuid.uuid4().hex[:12]}"
    with pytest.raises(httpx.TimeoutException):
        httpx.post(
            f"{gateway.url}/v1/chat/completions",
            json=chat(),
            headers={"authorization": f"Bearer {APP_KEY}", "x-request-id": rid},
            timeout=0.5,
        )
    event = usage_event(gateway, rid, timeout=5)
    assert event["status"] == 499
    assert event["prompt_tokens"] > 0 and event["estimated"] is True
    assert event["completion_tokens"] == 0 and event["cost_usd"] > 0


# --- 7. every choice asked for is reserved ----------------------------------------------------


def test_concurrent_calls_with_n_overshoot_a_token_limit_by_at_most_one_call(
    gateway: GatewayProcess, openai_fake: FakeOpenAI
) -> None:
    openai_fake.delay_all(0.5)  # every call is in flight before any is settled
    words = " ".join(["hello"] * 60)
    body = chat(messages=[{"role": "user", "content": words}], n=5, max_tokens=60)

    async def calls() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=15) as client:
            return await asyncio.gather(
                *(
                    client.post(
                        f"{gateway.url}/v1/chat/completions",
                        json=body,
                        headers={"authorization": f"Bearer {TPM_KEY}"},
                    )
                    for _ in range(12)
                )
            )

    answers = asyncio.run(calls())
    served = [answer.json()["usage"]["total_tokens"] for answer in answers if answer.is_success]
    assert served, [answer.text for answer in answers]
    one_call = max(served)  # what one call used: its reservation was at least that
    assert sum(served) <= TPM_LIMIT + one_call, (len(served), sum(served))
    assert all(a.status_code in (200, 429) for a in answers)


# --- 8. a fallback is called only within its own limits and the caller's policy -----------------


def test_a_fallback_keeps_its_own_limits_and_the_callers_endpoint_list(
    gateway: GatewayProcess, openai_fake: FakeOpenAI, openai_fake_b: FakeOpenAI
) -> None:
    openai_fake.inject("status", times=10, status=500)
    rid = f"fb-{uuid.uuid4().hex[:12]}"
    first = post(
        gateway, "/v1/chat/completions", {**chat(), "model": "primary"}, **{"x-request-id": rid}
    )
    assert first.status_code == 200, first.text
    assert first.headers["x-served-model"] == "limited-backup/0;fallback"
    event = usage_event(gateway, rid)
    assert (event["endpoint"], event["served_endpoint"]) == ("primary", "limited-backup")
    # limited-backup allows 1 request a minute; closed-backup is not on the app key's list
    second = post(gateway, "/v1/chat/completions", {**chat(), "model": "primary"})
    assert second.status_code == 429, second.text
    guarded = post(gateway, "/v1/chat/completions", {**chat(), "model": "guarded"})
    assert guarded.status_code == 502, guarded.text
    assert [r.body["model"] for r in openai_fake_b.requests] == ["up-limited"]


# --- 14. labels come from the route table ------------------------------------------------------


def test_odd_paths_are_recorded_by_their_route(gateway: GatewayProcess) -> None:
    rid = f"path-{uuid.uuid4().hex[:12]}"
    response = post(
        gateway,
        "//serving-endpoints/chat/invocations/",
        {"messages": USER},
        **{"x-request-id": rid},
    )
    assert response.status_code == 200, response.text
    assert usage_event(gateway, rid)["route"] == "/serving-endpoints/{name}/invocations"
    metrics = httpx.get(
        f"{gateway.url}/metrics", headers={"authorization": f"Bearer {APP_KEY}"}
    ).text
    assert 'route="//serving-endpoints' not in metrics
    assert 'route="/serving-endpoints/{name}/invocations"' in metrics


# --- 15. Anthropic blocks of the wrong type are the client's error ------------------------------


@pytest.mark.parametrize(
    "change",
    [
        {"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]},
        {"messages": [{"role": "user", "content": [{"type": "image", "source": "x"}]}]},
        {"messages": [{"role": "user", "content": [5]}]},
        {"messages": [{"role": "user", "content": [{"type": "tool_result", "content": 5}]}]},
        {"system": [{"type": "text", "text": ["a"]}]},
        {"tools": [{"name": 3}]},
        {"tools": "all"},
        {"stop_sequences": "stop"},
        {"temperature": "hot"},
        {"max_tokens": True},
    ],
)
def test_wrong_typed_anthropic_fields_are_a_400_in_anthropic_shape(
    gateway: GatewayProcess, change: dict[str, Any]
) -> None:
    body = {"model": "chat", "max_tokens": 10, "messages": USER, **change}
    response = post(gateway, "/v1/messages", body)
    assert response.status_code == 400, response.text
    assert response.json()["type"] == "error"
    assert response.json()["error"]["type"] == "invalid_request_error"


# --- 16. operational routes can be closed ---------------------------------------------------


def test_metrics_can_require_a_key(gateway: GatewayProcess) -> None:
    assert httpx.get(f"{gateway.url}/metrics").status_code == 401
    answer = httpx.get(f"{gateway.url}/metrics", headers={"authorization": f"Bearer {APP_KEY}"})
    assert answer.status_code == 200
    assert httpx.get(f"{gateway.url}/version").status_code == 200  # still open by default
