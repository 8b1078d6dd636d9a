"""The limiter: one suite run against the memory and the Redis store (and, where both apply, the
sliding window and GCRA), then Redis across processes.

Clocks are injected (`now=`) wherever exact counts are asserted, so nothing refills mid-test.
Every test gets its own key namespace in the shared Redis, deleted afterwards, so parallel runs
cannot collide. Redis tests are skipped when nothing answers at GATEWAY_TEST_REDIS_URL.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import math
import os
import random
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import pytest
import redis

from gateway.config.schema import (
    AuthConfig,
    BudgetConfig,
    CustomEndpointConfig,
    GatewayConfig,
    GroupConfig,
    KeyConfig,
    LimitsConfig,
    LimitsStoreConfig,
    ServedModelConfig,
)
from gateway.limits import (
    Limiter,
    LimitExceeded,
    LimitStoreUnavailable,
    MemoryLimiter,
    Reservation,
    Rule,
    RuleBook,
    format_duration,
    open_limiter,
    rules_for,
)
from gateway.limits.base import Algorithm, period_of
from gateway.limits.redis import RedisLimiter

pytestmark = pytest.mark.anyio

REDIS_URL = os.environ.get("GATEWAY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
ROOT = Path(__file__).resolve().parent.parent


def at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


NOW = at("2026-11-25T12:00:00")


def rpm(scope: str, limit: float, algorithm: Algorithm = "sliding_window") -> Rule:
    return Rule(scope, "requests", limit, 60.0, algorithm=algorithm)


def tpm(scope: str, limit: float, algorithm: Algorithm = "sliding_window") -> Rule:
    return Rule(scope, "tokens", limit, 60.0, algorithm=algorithm)


def slots(scope: str, limit: int) -> Rule:
    return Rule(scope, "concurrency", limit, 0.0)


def budget(scope: str, usd: float, period: Literal["day", "month"] = "day") -> Rule:
    return Rule(scope, "budget", usd, 0.0, period)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def redis_up() -> bool:
    try:
        with redis.Redis.from_url(REDIS_URL, socket_timeout=0.5) as client:
            return bool(client.ping())
    except redis.RedisError:
        return False


def _no_redis() -> None:
    """Skip without Redis, unless the run named one (CI does): then its absence is a failure."""
    if "GATEWAY_TEST_REDIS_URL" in os.environ:
        pytest.fail(f"no Redis at {REDIS_URL}, which GATEWAY_TEST_REDIS_URL names")
    pytest.skip(f"no Redis at {REDIS_URL}")


@pytest.fixture
def store(redis_up: bool) -> Iterator[redis.Redis]:
    """A plain client for looking at the Redis state; skips when there is no Redis."""
    if not redis_up:
        _no_redis()
    with redis.Redis.from_url(REDIS_URL, socket_timeout=2) as client:
        yield client


@pytest.fixture
def namespace(redis_up: bool) -> Iterator[str]:
    namespace = f"gw:rl:test-{uuid.uuid4().hex}:"
    yield namespace
    if redis_up:
        with redis.Redis.from_url(REDIS_URL) as client:
            keys = list(client.scan_iter(match=namespace + "*", count=1000))
            if keys:
                client.delete(*keys)


@pytest.fixture(params=["sliding_window", "gcra"])
def algorithm(request: pytest.FixtureRequest) -> Algorithm:
    """For the tests whose expectations hold under either algorithm."""
    value: Algorithm = request.param
    return value


@pytest.fixture(params=["memory", "redis"])
async def limiter(
    request: pytest.FixtureRequest, namespace: str, redis_up: bool
) -> AsyncIterator[Limiter]:
    if request.param == "memory":
        made: Limiter = MemoryLimiter()
    elif not redis_up:
        _no_redis()
    else:
        # The suite fires bursts of 1,000 concurrent acquires at a 64-connection pool: under
        # coverage tracing the client alone can take longer than the production pool wait
        # (0.5 s), and the bursts test exactness, not how long a caller queues for a connection.
        made = RedisLimiter.from_url(REDIS_URL, namespace=namespace, timeout_s=5.0)
    yield made
    await made.aclose()


async def count_admitted(limiter: Limiter, rules: list[Rule], calls: int, **kw: Any) -> int:
    admitted = 0
    for _ in range(calls):
        try:
            await limiter.acquire(rules, **kw)
        except LimitExceeded:
            continue
        admitted += 1
    return admitted


async def refused(limiter: Limiter, rules: list[Rule], **kw: Any) -> LimitExceeded:
    with pytest.raises(LimitExceeded) as caught:
        await limiter.acquire(rules, **kw)
    return caught.value


# --- the shared suite ----------------------------------------------------------------------------


async def test_rpm_admits_exactly_its_limit_in_a_burst(
    limiter: Limiter, algorithm: Algorithm
) -> None:
    rule = rpm("key:app-1", 100, algorithm)
    assert await count_admitted(limiter, [rule], 1000, now=NOW) == 100
    # and concurrently from one process, still exactly the limit
    outcomes = await asyncio.gather(
        *(limiter.acquire([rpm("key:app-2", 100, algorithm)], now=NOW) for _ in range(1000)),
        return_exceptions=True,
    )
    assert sum(isinstance(o, Reservation) for o in outcomes) == 100
    assert all(isinstance(o, Reservation | LimitExceeded) for o in outcomes)


async def test_gcra_refills_one_request_per_interval(limiter: Limiter) -> None:
    rule = rpm("key:app-1", 100, "gcra")  # one every 0.6 s
    assert await count_admitted(limiter, [rule], 150, now=NOW) == 100
    assert (await refused(limiter, [rule], now=NOW)).retry_after_s == pytest.approx(0.6)
    assert (await refused(limiter, [rule], now=NOW + 0.3)).retry_after_s == pytest.approx(0.3)
    assert await count_admitted(limiter, [rule], 5, now=NOW + 0.6) == 1
    assert await count_admitted(limiter, [rule], 20, now=NOW + 6.0) == 9
    # drained completely a minute after the last admission: a full burst, not more
    assert await count_admitted(limiter, [rule], 150, now=NOW + 66.0) == 100


async def test_a_refused_call_counts_against_no_rule(
    limiter: Limiter, algorithm: Algorithm
) -> None:
    group = rpm("group:team-a", 5, algorithm)
    key_a = [slots("key:a", 1), tpm("key:a", 1000, algorithm), budget("key:a", 1.0)]
    key_a.append(rpm("key:a", 10, algorithm))
    assert await count_admitted(limiter, [rpm("key:b", 10, algorithm), group], 10, now=NOW) == 5
    error = await refused(limiter, [*key_a, group], tokens=1000, cost_usd=1.0, now=NOW)
    assert error.rule == group
    # key a's slot, tokens, budget and requests are all still whole
    held = await limiter.acquire(key_a, tokens=1000, cost_usd=1.0, now=NOW)
    assert await count_admitted(limiter, [rpm("key:a", 10, algorithm)], 20, now=NOW) == 9
    await held.settle(tokens=1000, cost_usd=1.0)


async def test_the_tightest_rule_is_named_and_shown_in_headers(
    limiter: Limiter, algorithm: Algorithm
) -> None:
    rules = [
        rpm("key:app-1", 100, algorithm),
        rpm("endpoint:llama", 10, algorithm),
        tpm("key:app-1", 10_000, algorithm),
        tpm("endpoint:llama", 2000, algorithm),
        budget("key:app-1", 5.0),
    ]
    reservation = await limiter.acquire(rules, tokens=500, cost_usd=0.25, now=NOW)
    # a sliding window resets when its oldest entry leaves (this call's, a minute on); GCRA's
    # bucket when it has drained (one request's 6 s, 500 tokens' 15 s)
    sliding = algorithm == "sliding_window"
    assert reservation.headers() == [
        (b"x-ratelimit-limit-requests", b"10"),
        (b"x-ratelimit-remaining-requests", b"9"),
        (b"x-ratelimit-reset-requests", b"1m0s" if sliding else b"6s"),
        (b"x-ratelimit-limit-tokens", b"2000"),
        (b"x-ratelimit-remaining-tokens", b"1500"),
        (b"x-ratelimit-reset-tokens", b"1m0s" if sliding else b"15s"),
        (b"x-budget-remaining-usd", b"4.750000"),
    ]
    later = NOW + 10 if sliding else NOW
    assert await count_admitted(limiter, rules, 20, tokens=10, cost_usd=0.0, now=later) == 9
    error = await refused(limiter, rules, tokens=10, now=later)
    assert error.rule == rules[1] and error.kind == "requests"
    # the sliding window's first entry leaves at NOW + 60; GCRA drains one request in 6 s
    assert error.retry_after_s == pytest.approx(50.0 if sliding else 6.0)
    # of two refusing rules, the one to wait longer for is named
    error = await refused(limiter, rules, tokens=10, cost_usd=5.0, now=NOW)
    assert error.kind == "budget" and error.retry_after_s == pytest.approx(12 * 3600)


async def test_gcra_tokens_are_reserved_then_settled(limiter: Limiter) -> None:
    rule = tpm("key:app-1", 1000, "gcra")  # 1000 per minute: 16.67 per second
    first = await limiter.acquire([rule], tokens=400, now=NOW)
    await first.settle(tokens=100, cost_usd=0.0, now=NOW)  # refund 300
    second = await limiter.acquire([rule], tokens=800, now=NOW)  # 100 + 800 fits
    assert second.headers()[1] == (b"x-ratelimit-remaining-tokens", b"100")
    error = await refused(limiter, [rule], tokens=200, now=NOW)  # 1100: 100 over
    assert error.retry_after_s == pytest.approx(6.0)
    # using more than reserved is charged: 900 + 200 extra is 100 over, 6 s of debt
    await second.settle(tokens=1000, cost_usd=0.0, now=NOW)
    error = await refused(limiter, [rule], tokens=0, now=NOW)
    assert error.retry_after_s == pytest.approx(6.0)
    assert await count_admitted(limiter, [rule], 1, tokens=1000, now=NOW + 66.0) == 1


async def test_concurrent_reservations_cannot_overshoot(
    limiter: Limiter, algorithm: Algorithm
) -> None:
    rule = tpm("key:app-1", 1000, algorithm)
    outcomes = await asyncio.gather(
        *(limiter.acquire([rule], tokens=300, now=NOW) for _ in range(10)), return_exceptions=True
    )
    held = [o for o in outcomes if isinstance(o, Reservation)]
    assert len(held) == 3  # 900 reserved; a fourth would be 1200
    actual = 0
    for reservation in held:
        await reservation.settle(tokens=250, cost_usd=0.0, now=NOW)
        actual += 250
    actual += 250 * await count_admitted(limiter, [rule], 5, tokens=250, now=NOW)
    assert actual == 1000 <= 1000 + 300


async def test_a_reservation_larger_than_the_limit_is_refused_outright(
    limiter: Limiter, algorithm: Algorithm
) -> None:
    rules = [tpm("key:app-1", 1000, algorithm), budget("key:app-1", 1.0)]
    error = await refused(limiter, rules, tokens=1001, now=NOW)
    assert error.rule == rules[0] and error.retry_after_s is None and error.headers() == []
    assert "request alone exceeds" in str(error)
    error = await refused(limiter, rules, tokens=10, cost_usd=1.5, now=NOW)
    assert error.kind == "budget" and error.retry_after_s is None
    await limiter.acquire(rules, tokens=1000, cost_usd=1.0, now=NOW)  # nothing was counted


async def test_concurrency_slots_are_held_and_released(limiter: Limiter) -> None:
    rule = slots("key:app-1", 2)
    first = await limiter.acquire([rule], now=NOW)
    second = await limiter.acquire([rule], now=NOW)
    error = await refused(limiter, [rule], now=NOW)
    assert error.kind == "concurrency" and error.retry_after_s == pytest.approx(1.0)
    await first.settle(tokens=0, cost_usd=0.0)
    await first.settle(tokens=0, cost_usd=0.0)  # idempotent: frees one slot, not two
    third = await limiter.acquire([rule], now=NOW)
    await refused(limiter, [rule], now=NOW)
    await asyncio.gather(second.settle(tokens=0, cost_usd=0.0), third.settle(tokens=0, cost_usd=0))
    assert await count_admitted(limiter, [rule], 3, now=NOW) == 2


async def test_a_crashed_callers_slot_frees_when_its_lease_ends(limiter: Limiter) -> None:
    rule = slots("key:app-1", 1)
    await limiter.acquire([rule], now=NOW)  # never settled
    await refused(limiter, [rule], now=NOW + 599)
    await limiter.acquire([rule], now=NOW + 601)


async def test_settle_in_finally_after_cancellation_frees_the_slot(limiter: Limiter) -> None:
    rule = slots("key:app-1", 1)

    async def call() -> None:
        reservation = await limiter.acquire([rule])
        try:
            await asyncio.Event().wait()
        finally:
            await reservation.settle(tokens=0, cost_usd=0.0)

    for cancellations in (1, 2):  # the second one lands while the settle is in flight
        task = asyncio.create_task(call())
        await asyncio.sleep(0.05)
        for _ in range(cancellations):
            task.cancel()
            await asyncio.sleep(0)
        with pytest.raises(asyncio.CancelledError):
            await task
        await eventually_acquired(limiter, [rule])


async def test_a_cancelled_acquire_gives_back_what_it_took(
    limiter: Limiter, algorithm: Algorithm
) -> None:
    rules = [slots("key:app-1", 1), tpm("key:app-1", 100, algorithm)]
    for delay in (0, 0.0005, 0.001, 0.002):
        task = asyncio.create_task(limiter.acquire(rules, tokens=100))
        await asyncio.sleep(delay)
        task.cancel()
        try:
            reservation = await task
        except asyncio.CancelledError:
            pass
        else:  # it finished before the cancel: settle it as its caller would have
            await reservation.settle(tokens=0, cost_usd=0.0)
        await eventually_acquired(limiter, rules, tokens=100)


async def eventually_acquired(limiter: Limiter, rules: list[Rule], **kw: Any) -> None:
    deadline = time.monotonic() + 2.0
    while True:
        try:
            reservation = await limiter.acquire(rules, **kw)
        except LimitExceeded:
            assert time.monotonic() < deadline, "the slot was never given back"
            await asyncio.sleep(0.01)
            continue
        await reservation.settle(tokens=0, cost_usd=0.0)
        return


async def test_a_day_budget_rolls_over_at_utc_midnight(limiter: Limiter) -> None:
    rule = budget("key:app-1", 1.0)
    late = at("2026-11-25T23:00:00")
    first = await limiter.acquire([rule], cost_usd=0.6, now=late)
    assert first.headers() == [(b"x-budget-remaining-usd", b"0.400000")]
    await first.settle(tokens=0, cost_usd=0.5)
    error = await refused(limiter, [rule], cost_usd=0.6, now=late)
    assert error.kind == "budget" and error.retry_after_s == pytest.approx(3600)
    assert "1h0m0s" in str(error) and error.headers() == [(b"retry-after", b"3600")]
    last = await limiter.acquire([rule], cost_usd=0.5, now=late + 1800)  # exactly the budget
    assert last.headers() == [(b"x-budget-remaining-usd", b"0.000000")]
    error = await refused(limiter, [rule], cost_usd=0.0, now=late + 1800)  # exhausted
    assert error.retry_after_s == pytest.approx(1800)
    await limiter.acquire([rule], cost_usd=0.6, now=at("2026-11-26T00:00:00"))
    # settling after midnight corrects the day the call reserved from, not the new one
    await last.settle(tokens=0, cost_usd=0.1, now=at("2026-11-26T00:00:10"))
    await limiter.acquire([rule], cost_usd=0.4, now=at("2026-11-26T00:00:20"))
    await refused(limiter, [rule], cost_usd=0.01, now=at("2026-11-26T00:00:20"))
    await limiter.acquire([rule], cost_usd=0.4, now=late + 3599)


async def test_a_month_budget_rolls_over_on_the_first(limiter: Limiter) -> None:
    rule = budget("group:team-a", 10.0, "month")
    leap_day = at("2028-02-29T12:00:00")
    await limiter.acquire([rule], cost_usd=10.0, now=at("2028-02-01T00:00:00"))
    error = await refused(limiter, [rule], cost_usd=0.01, now=leap_day)
    assert error.retry_after_s == pytest.approx(12 * 3600)
    await limiter.acquire([rule], cost_usd=10.0, now=at("2028-03-01T00:00:00"))
    new_year = at("2026-12-31T23:59:59")
    await limiter.acquire([rule], cost_usd=9.5, now=new_year)
    assert (await refused(limiter, [rule], cost_usd=1, now=new_year)).retry_after_s == 1.0
    await limiter.acquire([rule], cost_usd=1.0, now=at("2027-01-01T00:00:00"))


async def test_no_rules_means_no_limits(limiter: Limiter) -> None:
    reservation = await limiter.acquire([], tokens=10**9, cost_usd=1e9)
    assert reservation.headers() == []
    await reservation.settle(tokens=5, cost_usd=1.0)


# --- sliding windows -----------------------------------------------------------------------------


def most_in_any_window(times: list[float], span_s: float) -> int:
    """The most admissions any window of `span_s` holds. The fullest window can be taken to end
    at an admission, and the limiter counts entries in (t - span_s, t] when it admits at t."""
    times = sorted(times)
    most, first = 0, 0
    for last, moment in enumerate(times):
        while times[first] <= moment - span_s:
            first += 1
        most = max(most, last - first + 1)
    return most


async def test_from_idle_a_limit_admits_no_more_than_itself_in_its_window(
    limiter: Limiter,
) -> None:
    # The finding: GCRA's burst is the limit and it refills meanwhile, so 10/s admitted 20 in
    # one second. A sliding window admits the next call only when the first is a second old.
    rule = Rule("key:app-1", "requests", 10, 1.0)
    assert await count_admitted(limiter, [rule], 30, now=NOW) == 10
    for tenth in range(1, 10):
        assert await count_admitted(limiter, [rule], 5, now=NOW + tenth / 10) == 0
    assert (await refused(limiter, [rule], now=NOW + 0.25)).retry_after_s == pytest.approx(0.75)
    assert await count_admitted(limiter, [rule], 30, now=NOW + 1.0) == 10


async def test_back_to_back_calls_never_exceed_the_limit_in_any_window(limiter: Limiter) -> None:
    # Clients calling back to back for 3 s on a clock that moves 0-20 ms per call: every window of
    # a second holds at most 10 requests and 1000 tokens, and the long-run rate is the limit.
    rng = random.Random(3)
    requests, tokens = (
        Rule("key:app-1", "requests", 10, 1.0),
        Rule("key:app-2", "tokens", 1000, 1.0),
    )
    now, admitted, used = NOW, [], []
    while now < NOW + 3.0:
        try:
            await limiter.acquire([requests], now=now)
            admitted.append(now)
        except LimitExceeded:
            pass
        try:
            reservation = await limiter.acquire([tokens], tokens=rng.randint(50, 150), now=now)
        except LimitExceeded:
            pass
        else:  # refunds only: what each window finally holds stays within the limit
            actual = rng.randint(0, reservation.tokens)
            await reservation.settle(tokens=actual, cost_usd=0.0, now=now)
            used.append((now, actual))
        now += rng.uniform(0, 0.02)
    assert most_in_any_window(admitted, 1.0) == 10
    assert len(admitted) == 30  # 10 at once, then 10 as each second's first ones leave
    for moment, _ in used:
        assert sum(n for t, n in used if moment - 1.0 < t <= moment) <= 1000
    assert sum(n for _, n in used) > 2 * 1000  # refunds made room: ~1000 settled per second


async def test_sliding_token_reservations_are_settled_in_their_entry(limiter: Limiter) -> None:
    rule = tpm("key:app-1", 1000)
    first = await limiter.acquire([rule], tokens=400, now=NOW)
    await first.settle(tokens=100, cost_usd=0.0, now=NOW + 1)  # the refund makes room at once
    second = await limiter.acquire([rule], tokens=800, now=NOW + 10)  # 100 + 800
    assert second.headers()[1:] == [
        (b"x-ratelimit-remaining-tokens", b"100"),
        (b"x-ratelimit-reset-tokens", b"50s"),  # when the first entry leaves
    ]
    error = await refused(limiter, [rule], tokens=200, now=NOW + 10)
    assert error.retry_after_s == pytest.approx(50.0)  # 100 of the first must leave
    # using more than reserved counts: 1100 in the window refuses even a call of nothing
    await second.settle(tokens=1000, cost_usd=0.0, now=NOW + 20)
    assert (await refused(limiter, [rule], now=NOW + 20)).retry_after_s == pytest.approx(40.0)
    assert (await refused(limiter, [rule], tokens=1, now=NOW + 60)).retry_after_s == 10.0
    await limiter.acquire([rule], tokens=1000, now=NOW + 70)  # the second left too
    # settled to nothing: no longer in the window
    zero = await limiter.acquire([rule], tokens=500, now=NOW + 200)
    await zero.settle(tokens=0, cost_usd=0.0, now=NOW + 201)
    await limiter.acquire([rule], tokens=1000, now=NOW + 202)
    # a charge settled after its entry left the window counts from the settle
    late = await limiter.acquire([rule], tokens=100, now=NOW + 300)
    await late.settle(tokens=300, cost_usd=0.0, now=NOW + 400)  # 200 more, at NOW + 400
    assert (await refused(limiter, [rule], tokens=900, now=NOW + 401)).retry_after_s == 59.0
    await limiter.acquire([rule], tokens=800, now=NOW + 401)


async def test_fractional_request_limits_in_a_sliding_window(limiter: Limiter) -> None:
    half = Rule("key:app-1", "requests", 0.5, 1.0)  # one every two seconds, not never
    assert await count_admitted(limiter, [half], 3, now=NOW) == 1
    assert (await refused(limiter, [half], now=NOW + 1.5)).retry_after_s == pytest.approx(0.5)
    assert await count_admitted(limiter, [half], 3, now=NOW + 2.0) == 1
    odd = Rule("key:app-2", "requests", 2.5, 1.0)  # the whole requests that fit: 2
    assert await count_admitted(limiter, [odd], 5, now=NOW) == 2
    assert await count_admitted(limiter, [odd], 5, now=NOW + 0.999) == 0


# --- pure functions ------------------------------------------------------------------------------


def test_reset_durations_are_formatted_like_openai() -> None:
    cases = {0: "0ms", 0.02: "20ms", 0.6: "600ms", 1: "1s", 1.5: "1.5s", 59.9994: "1m0s"}
    cases |= {360: "6m0s", 3600: "1h0m0s", 3723.25: "1h2m3.25s", 86_400: "24h0m0s"}
    assert {seconds: format_duration(seconds) for seconds in cases} == cases


def test_rules_are_derived_from_each_scope_of_the_config() -> None:
    limits = LimitsConfig(requests_per_minute=100, tokens_per_day=1e6, max_concurrent=4)
    assert rules_for("key:app-1", limits, BudgetConfig(usd_per_month=50)) == (
        Rule("key:app-1", "requests", 100, 60),
        Rule("key:app-1", "tokens", 1e6, 86_400),
        Rule("key:app-1", "concurrency", 4, 0),
        Rule("key:app-1", "budget", 50, 0, "month"),
    )
    key = KeyConfig(
        id="app-1",
        sha256="0" * 64,
        groups=("team-a", "team-a", "other"),
        limits=LimitsConfig(requests_per_second=5),
        endpoint_limits={"llama": LimitsConfig(tokens_per_minute=1000)},
        budget=BudgetConfig(usd_per_day=2),
    )
    config = GatewayConfig(
        auth=AuthConfig(keys=(key,)),
        groups={"team-a": GroupConfig(limits=LimitsConfig(max_concurrent=3))},
        endpoints=(
            CustomEndpointConfig(
                name="llama",
                type="custom",
                served_models=(ServedModelConfig(model="m"),),
                limits=LimitsConfig(requests_per_hour=1000),
            ),
        ),
    )
    book = RuleBook(config)
    assert [(r.scope, r.kind) for r in book.for_call("app-1", "llama")] == [
        ("key:app-1", "requests"),
        ("key:app-1", "budget"),
        ("key:app-1|endpoint:llama", "tokens"),
        ("group:team-a", "concurrency"),  # once, though the key lists the group twice
        ("endpoint:llama", "requests"),
    ]
    assert [r.scope for r in book.for_call("jwt-user", "other", ["team-a"])] == ["group:team-a"]


def test_the_sliding_window_is_the_default_and_gcra_an_option() -> None:
    limits = LimitsConfig(requests_per_second=10, tokens_per_minute=1000)
    assert [r.algorithm for r in rules_for("key:a", limits)] == ["sliding_window"] * 2
    gcra = LimitsConfig(requests_per_second=10, tokens_per_minute=1000, algorithm="gcra")
    assert [r.algorithm for r in rules_for("key:a", gcra)] == ["gcra"] * 2
    # the two keep their state apart, so switching on a reload starts afresh, not confused
    assert rules_for("key:a", limits)[0].key != rules_for("key:a", gcra)[0].key
    with pytest.raises(ValueError, match="algorithm"):
        LimitsConfig.model_validate({"algorithm": "fixed_window"})


def test_periods_are_utc_calendar_days_and_months() -> None:
    assert period_of("day", at("2026-11-25T23:59:59")) == ("2026-11-25", at("2026-11-26T00:00:00"))
    assert period_of("month", at("2028-02-29T00:00:00")) == ("2028-02", at("2028-03-01T00:00:00"))
    assert period_of("month", at("2026-12-31T12:00:00")) == ("2026-12", at("2027-01-01T00:00:00"))


def test_unknown_stores_are_refused() -> None:
    with pytest.raises(ValueError, match="unsupported limits store"):
        open_limiter(LimitsStoreConfig(store="memcached://x"))
    assert isinstance(open_limiter(LimitsStoreConfig()), MemoryLimiter)


# --- Redis only ----------------------------------------------------------------------------------


async def test_redis_keys_are_namespaced_and_expire(store: redis.Redis, namespace: str) -> None:
    limiter = open_limiter(LimitsStoreConfig(store=REDIS_URL), namespace=namespace)
    assert isinstance(limiter, RedisLimiter)
    rules = [
        rpm("key:app-1", 100),
        tpm("key:app-1|endpoint:llama", 1000),
        rpm("group:team-a", 100, "gcra"),
        tpm("group:team-a", 1000, "gcra"),
        slots("group:team-a", 2),
        budget("key:app-1", 1.0),
        budget("key:app-1", 30.0, "month"),
    ]
    moment = at("2026-11-25T08:00:00")
    reservation = await limiter.acquire(rules, tokens=10, cost_usd=0.25, now=moment)
    await limiter.aclose()
    names = {key.decode().removeprefix(namespace) for key in store.scan_iter(namespace + "*")}
    assert names == {
        "window:requests:60:key:app-1",
        "window:tokens:60:key:app-1|endpoint:llama",
        "amounts:tokens:60:key:app-1|endpoint:llama",
        "requests:60:group:team-a",  # GCRA's, named as before sliding windows came
        "tokens:60:group:team-a",
        "concurrency:group:team-a",
        "budget:key:app-1:day:2026-11-25",
        "budget:key:app-1:month:2026-11",
    }
    assert all(store.pttl(namespace + name) > 0 for name in names)
    assert store.pttl(namespace + "window:requests:60:key:app-1") <= 61_000
    assert store.get(namespace + "budget:key:app-1:day:2026-11-25") == b"0.25"
    entries = store.zrange(namespace + "window:requests:60:key:app-1", 0, -1, withscores=True)
    assert entries == [(reservation.id.encode(), moment)]
    amounts = store.hgetall(namespace + "amounts:tokens:60:key:app-1|endpoint:llama")
    assert amounts == {reservation.id.encode(): b"10", b"used": b"10"}


async def test_redis_names_periods_like_python(namespace: str, store: redis.Redis) -> None:
    limiter = RedisLimiter.from_url(REDIS_URL, namespace=namespace)
    rng = random.Random(7)
    rules = [budget("key:x", 1e9), budget("key:x", 1e9, "month")]
    moments = [at("2000-02-29T23:59:59"), at("2100-03-01T00:00:00"), at("1970-01-01T00:00:00")]
    moments += [rng.uniform(0, 4e9) for _ in range(200)]
    for moment in moments:
        reservation = await limiter.acquire(rules, cost_usd=0.0, now=moment)
        day, month = reservation.budget_keys  # type: ignore[attr-defined]
        assert day == f"{namespace}budget:key:x:day:{period_of('day', moment)[0]}"
        assert month == f"{namespace}budget:key:x:month:{period_of('month', moment)[0]}"
    await limiter.aclose()


async def test_a_lost_script_cache_is_reloaded(namespace: str, store: redis.Redis) -> None:
    limiter = RedisLimiter.from_url(REDIS_URL, namespace=namespace)
    limiter._acquire_script.sha = "0" * 40  # as after a Redis restart: EVALSHA says NOSCRIPT
    await limiter.acquire([rpm("key:app-1", 1)], now=NOW)
    await refused(limiter, [rpm("key:app-1", 1)], now=NOW)
    await limiter.aclose()


async def test_memory_and_redis_agree_on_sliding_windows(
    namespace: str, store: redis.Redis
) -> None:
    # The same random calls and settles, on the same clock, get the same answers from both.
    memory, shared = MemoryLimiter(), RedisLimiter.from_url(REDIS_URL, namespace=namespace)
    rng = random.Random(11)
    rules = [
        Rule("key:a", "requests", 5, 1.0),
        Rule("key:a", "tokens", 500, 2.0),
        Rule("key:b", "requests", 0.5, 1.0),
        Rule("key:c", "requests", 2.5, 1.0),
        Rule("key:c", "tokens", 300, 1.0),
    ]
    held: list[tuple[Reservation, Reservation]] = []
    now = NOW
    for _ in range(400):
        now += rng.choice((0.0, 0.01, 0.1, 0.3, 1.0))
        if held and rng.random() < 0.4:  # settle one: a refund or a charge, sometimes late
            mine, theirs = held.pop(rng.randrange(len(held)))
            actual = rng.randint(0, 2 * mine.tokens + 10)
            await mine.settle(tokens=actual, cost_usd=0.0, now=now)
            await theirs.settle(tokens=actual, cost_usd=0.0, now=now)
            continue
        chosen = rng.sample(rules, rng.randint(1, 3))
        chosen = [r for r in rules if r in chosen]  # in a fixed order
        tokens = rng.choice((0, 20, 80, 150, 400))
        outcomes: list[Reservation | LimitExceeded] = []
        for limiter in (memory, shared):
            try:
                outcomes.append(await limiter.acquire(chosen, tokens=tokens, now=now))
            except LimitExceeded as e:
                outcomes.append(e)
        mine_or_error, theirs_or_error = outcomes
        if isinstance(mine_or_error, LimitExceeded):
            assert isinstance(theirs_or_error, LimitExceeded)
            assert mine_or_error.rule == theirs_or_error.rule
            if mine_or_error.retry_after_s is None:
                assert theirs_or_error.retry_after_s is None
            else:
                assert theirs_or_error.retry_after_s == pytest.approx(mine_or_error.retry_after_s)
        else:
            assert isinstance(theirs_or_error, Reservation)
            assert mine_or_error.headers() == theirs_or_error.headers()
            held.append((mine_or_error, theirs_or_error))
    await shared.aclose()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_a_dead_store_is_reported_within_a_second(namespace: str) -> None:
    refusing = RedisLimiter.from_url(f"redis://127.0.0.1:{free_port()}/0", namespace=namespace)
    with socket.socket() as silent:  # accepts connections (the kernel does), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        hanging = RedisLimiter.from_url(f"redis://127.0.0.1:{silent.getsockname()[1]}/0")
        for limiter in (refusing, hanging):
            started = time.monotonic()
            with pytest.raises(LimitStoreUnavailable):
                await limiter.acquire([rpm("key:app-1", 100)])
            assert time.monotonic() - started < 1.0
            reservation = limiter._reservation(  # as if acquired before the store died
                [1, b"0", b"0", b""], [slots("key:app-1", 1)], "id", 0, 0.0
            )
            with pytest.raises(LimitStoreUnavailable):
                await reservation.settle(tokens=0, cost_usd=0.0)
            await reservation.settle(tokens=0, cost_usd=0.0)  # settled once, failed or not
            await limiter.aclose()


# --- Redis across processes ----------------------------------------------------------------------


async def _work(spec: dict[str, Any]) -> dict[str, Any]:
    ns, nows, seconds = spec["namespace"], spec["nows"], spec["seconds"]
    limiter = RedisLimiter.from_url(REDIS_URL, namespace=ns)
    side = redis.asyncio.Redis.from_url(REDIS_URL)
    rule_sets = [[Rule(*fields) for fields in rules] for rules in spec["rule_sets"]]
    rng = random.Random(spec["seed"])
    seen: dict[str, Any] = {"admitted": [0] * len(rule_sets), "actual_tokens": 0, "max_held": 0}
    calls = iter(range(spec["calls"]))

    async def run() -> None:
        for call in calls:
            if seconds and time.monotonic() > deadline:
                break
            try:
                which = call % len(rule_sets)
                reservation = await limiter.acquire(
                    rule_sets[which], tokens=spec["reserve"], now=nows[which]
                )
            except LimitExceeded:
                continue
            seen["admitted"][which] += 1
            actual = rng.randint(0, spec["reserve"])
            if spec["hold_s"]:
                held = await side.incr(ns + "held")
                seen["max_held"] = max(seen["max_held"], held)
                await asyncio.sleep(spec["hold_s"])
                await side.decr(ns + "held")
            seen["actual_tokens"] += actual
            await reservation.settle(tokens=actual, cost_usd=0.0, now=nows[which])

    await side.incr(ns + "ready")
    await side.blpop([ns + "go"], timeout=30)  # all start together
    deadline = time.monotonic() + seconds
    await asyncio.gather(*(run() for _ in range(spec["tasks"])))
    await limiter.aclose()
    await side.aclose()
    return seen


def worker_source() -> str:
    """A worker process's program: `_work` and just the imports it needs (not pytest's)."""
    return "\n".join(
        [
            "from __future__ import annotations",
            "import asyncio, json, random, sys, time",
            "from typing import Any",
            "import redis.asyncio",
            "from gateway.limits.base import LimitExceeded, Rule",
            "from gateway.limits.redis import RedisLimiter",
            f"REDIS_URL = {REDIS_URL!r}",
            inspect.getsource(_work),
            "print(json.dumps(asyncio.run(_work(json.loads(sys.argv[1])))))",
        ]
    )


def run_workers(store: redis.Redis, namespace: str, specs: list[dict[str, Any]]) -> list[Any]:
    """Run one process per spec, started together; what each saw."""
    code = worker_source()
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", code, json.dumps({"namespace": namespace, **spec})],
            cwd=ROOT,
            stdout=subprocess.PIPE,
        )
        for spec in specs
    ]
    try:
        deadline = time.monotonic() + 30
        while int(store.get(namespace + "ready") or 0) < len(specs):
            assert time.monotonic() < deadline, "the workers did not start"
            time.sleep(0.02)
        store.rpush(namespace + "go", *["go"] * len(specs))
        outputs = [process.communicate(timeout=60)[0] for process in processes]
    finally:
        for process in processes:
            process.kill()
    assert all(process.returncode == 0 for process in processes)
    return [json.loads(output) for output in outputs]


def spec(rule_sets: list[list[Rule]], **options: Any) -> dict[str, Any]:
    """A worker's job: `calls` acquires (or as many as fit in `seconds`) from `tasks` tasks,
    cycling through the rule sets (each with its clock in `nows`: NOW frozen, None for the
    server's), each holding for `hold_s`."""
    fields = [
        [(r.scope, r.kind, r.limit, r.window_s, r.period, r.algorithm) for r in rs]
        for rs in rule_sets
    ]
    defaults = {"calls": 500, "tasks": 8, "reserve": 0, "hold_s": 0, "seed": 0, "seconds": 0}
    return {"rule_sets": fields, "nows": [NOW] * len(rule_sets), **defaults, **options}


def test_rpm_is_exact_across_processes(store: redis.Redis, namespace: str) -> None:
    # 4 x 500 calls on a frozen clock, and 4 x 500 on the server's, where the rate refills while
    # the calls run: 100/60 more per second
    frozen, live = rpm("endpoint:llama", 100), rpm("endpoint:mistral", 100)
    jobs = [spec([[frozen], [live]], calls=1000, nows=[NOW, None], seed=i) for i in range(4)]
    started = time.monotonic()
    results = run_workers(store, namespace, jobs)
    elapsed = time.monotonic() - started
    assert sum(r["admitted"][0] for r in results) == 100
    assert 100 <= sum(r["admitted"][1] for r in results) <= 100 + elapsed * 100 / 60 + 1


def test_a_group_rule_is_shared_by_its_members_across_processes(
    store: redis.Redis, namespace: str
) -> None:
    group = rpm("group:team-a", 100)
    members = [[rpm("key:a", 1000), group], [rpm("key:b", 1000), group]]
    results = run_workers(store, namespace, [spec(members, seed=i) for i in range(4)])
    by_key = [sum(r["admitted"][i] for r in results) for i in (0, 1)]
    assert sum(by_key) == 100 and min(by_key) > 0
    assert store.zcard(namespace + group.key) == 100


def test_concurrency_is_capped_across_processes(store: redis.Redis, namespace: str) -> None:
    rule = slots("endpoint:llama", 3)
    specs = [spec([[rule]], calls=150, tasks=2, hold_s=0.002, nows=[None])] * 4
    results = run_workers(store, namespace, specs)
    assert max(r["max_held"] for r in results) <= 3
    assert 0 < sum(r["admitted"][0] for r in results) < 600  # some were refused
    assert store.zcard(namespace + rule.key) == 0  # every slot was given back


def test_no_window_holds_more_than_the_limit_across_processes(
    store: redis.Redis, namespace: str
) -> None:
    # Two processes calling back to back for 3 s on the server's clock. A generous probe rule in
    # the same calls records each admission's time (the script's `now`) in its sorted set.
    rule = Rule("endpoint:llama", "requests", 10, 1.0)
    probe = Rule("probe:admitted", "requests", 1e6, 3600.0)
    options = {"calls": 10**9, "tasks": 4, "seconds": 3.0, "nows": [None]}
    results = run_workers(store, namespace, [spec([[rule, probe]], **options)] * 2)
    entries: list[tuple[bytes, float]] = store.zrange(  # type: ignore[assignment]
        namespace + probe.key, 0, -1, withscores=True
    )
    times = [moment for _, moment in entries]
    assert all(r["admitted"][0] > 0 for r in results)  # both processes were admitted some
    assert len(times) == sum(r["admitted"][0] for r in results)
    assert most_in_any_window(times, 1.0) == 10
    # the long-run rate is the limit: 10 at once, then 10 as each second's first ones leave
    assert 25 <= len(times) <= 10 * (math.floor(max(times) - min(times)) + 1)


def test_tokens_per_minute_hold_across_processes(store: redis.Redis, namespace: str) -> None:
    rule = tpm("endpoint:llama", 5000)
    specs = [spec([[rule]], calls=300, reserve=100, hold_s=0.001, seed=i) for i in range(4)]
    results = run_workers(store, namespace, specs)
    actual = sum(r["actual_tokens"] for r in results)
    assert 2500 < actual <= 5000 + 100
    # on a frozen clock the window holds exactly the actual tokens of every settled call
    assert float(store.hget(namespace + rule.amounts_key, "used") or 0) == actual
