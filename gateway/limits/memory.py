"""The in-process limiter: exact within one process, for single-process deployments and tests.

Every method runs on one event loop and never awaits between reading and writing its state, so a
check-and-count is atomic without locks. The arithmetic mirrors the Lua of `redis.py` line for
line; the shared test suite holds the two to the same behaviour.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Sequence

from gateway.limits.base import (
    BUDGET_GRACE_S,
    CONCURRENCY_RETRY_S,
    EPSILON,
    Reservation,
    Rule,
    StoreReservation,
    period_of,
    rejection,
)

_SWEEP_EVERY_S = 300.0  # how often idle state is dropped (what TTLs do in Redis)


class _Bucket:
    __slots__ = ("last", "level", "rate")

    def __init__(self, level: float, last: float, rate: float) -> None:
        self.level = level
        self.last = last
        self.rate = rate

    def drained(self, now: float) -> float:
        if now <= self.last:
            return self.level
        return max(self.level - (now - self.last) * self.rate, 0.0)


class MemoryLimiter:
    """A `Limiter` holding its state in dicts; `clock` is wall time (budgets follow UTC dates)."""

    def __init__(self, *, lease_s: float = 600.0, clock: Callable[[], float] = time.time) -> None:
        self._lease_s = lease_s
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}  # rule key -> GCRA state
        self._slots: dict[str, dict[str, float]] = {}  # rule key -> reservation id -> lease end
        self._spent: dict[str, list[float]] = {}  # "budget:<scope>:<period>" -> [USD, drop at]
        self._next_sweep = 0.0

    async def acquire(
        self,
        rules: Sequence[Rule],
        *,
        tokens: int = 0,
        cost_usd: float = 0.0,
        now: float | None = None,
    ) -> Reservation:
        if now is None:
            now = self._clock()
        if now >= self._next_sweep:
            self._sweep(now)
        rid = secrets.token_hex(12)
        waits: list[tuple[int, float | None]] = []
        after: list[float] = []  # per rule, the value to store if everything admits
        extra: list[float] = []  # per rule: the reset (rates, budgets)
        budget_keys: list[str] = []
        for index, rule in enumerate(rules):
            wait: float | None = -1.0
            value = reset = 0.0
            if rule.kind == "requests" or rule.kind == "tokens":
                amount = 1.0 if rule.kind == "requests" else float(tokens)
                bucket = self._buckets.get(rule.key)
                value = (0.0 if bucket is None else bucket.drained(now)) + amount
                if value > rule.capacity * (1 + EPSILON):
                    too_big = amount > rule.capacity * (1 + EPSILON)
                    wait = None if too_big else (value - rule.capacity) / rule.rate
                reset = value / rule.rate
            elif rule.kind == "concurrency":
                held = self._live_slots(rule.key, now)
                value = float(held + 1)
                if held >= rule.limit:
                    wait = CONCURRENCY_RETRY_S
            else:
                assert rule.period is not None  # Rule checks it
                label, ends = period_of(rule.period, now)
                budget_keys.append(f"{rule.key}:{rule.period}:{label}")
                spent = self._spent.get(budget_keys[-1], (0.0,))[0]
                value, reset = spent + cost_usd, ends - now
                if spent >= rule.limit or value > rule.limit * (1 + EPSILON):
                    wait = None if cost_usd > rule.limit * (1 + EPSILON) else ends - now
            if wait is None or wait >= 0:
                waits.append((index, wait))
            after.append(value)
            extra.append(reset)
        if waits:
            raise rejection(rules, waits)
        return self._count(rules, rid, tokens, cost_usd, now, after, extra, budget_keys)

    def _count(
        self,
        rules: Sequence[Rule],
        rid: str,
        tokens: int,
        cost_usd: float,
        now: float,
        after: list[float],
        reset: list[float],
        budget_keys: list[str],
    ) -> _MemoryReservation:
        remaining: list[float] = []
        budgets = iter(budget_keys)
        for index, rule in enumerate(rules):
            value = after[index]
            if rule.kind == "requests" or rule.kind == "tokens":
                self._buckets[rule.key] = _Bucket(value, now, rule.rate)
                remaining.append(rule.capacity - value)
            elif rule.kind == "concurrency":
                self._slots.setdefault(rule.key, {})[rid] = now + self._lease_s
                remaining.append(rule.limit - value)
            else:
                key = next(budgets)
                self._spent[key] = [value, now + reset[index] + BUDGET_GRACE_S]
                remaining.append(rule.limit - value)
        return _MemoryReservation(
            self,
            rules,
            id=rid,
            tokens=tokens,
            cost_usd=cost_usd,
            remaining=remaining,
            reset_s=reset,
            budget_keys=budget_keys,
        )

    def _live_slots(self, key: str, now: float) -> int:
        slots = self._slots.get(key)
        if not slots:
            return 0
        expired = [rid for rid, lease_end in slots.items() if lease_end <= now]
        for rid in expired:
            del slots[rid]
        return len(slots)

    def _release(
        self, reservation: _MemoryReservation, tokens_delta: int, cost_delta: float, now: float
    ) -> None:
        budgets = iter(reservation.budget_keys)
        for rule in reservation.rules:
            if rule.kind == "tokens" and tokens_delta:
                bucket = self._buckets.get(rule.key)
                level = 0.0 if bucket is None else bucket.drained(now)
                # A refund cannot move the TAT before now: what has drained is gone.
                self._buckets[rule.key] = _Bucket(max(level + tokens_delta, 0.0), now, rule.rate)
            elif rule.kind == "concurrency":
                slots = self._slots.get(rule.key)
                if slots is not None:
                    slots.pop(reservation.id, None)
                    if not slots:
                        del self._slots[rule.key]
            elif rule.kind == "budget":
                spent = self._spent.get(next(budgets))
                if spent is not None:  # else its period ended long ago: nothing to correct
                    spent[0] = max(spent[0] + cost_delta, 0.0)

    def _sweep(self, now: float) -> None:
        """Drop state that no longer says anything: drained buckets, ended budget periods."""
        self._next_sweep = now + _SWEEP_EVERY_S
        for key in [k for k, bucket in self._buckets.items() if bucket.drained(now) <= 0]:
            del self._buckets[key]
        for key in [k for k, (_, drop_at) in self._spent.items() if drop_at <= now]:
            del self._spent[key]
        for key in list(self._slots):
            if not self._live_slots(key, now):
                del self._slots[key]

    async def aclose(self) -> None:
        """Nothing to close; here to satisfy `Limiter`."""


class _MemoryReservation(StoreReservation["MemoryLimiter"]):
    __slots__ = ()

    async def _release(self, tokens_delta: int, cost_delta: float, now: float | None) -> None:
        # No await inside: settling completes even in a task that is being cancelled.
        self.limiter._release(
            self, tokens_delta, cost_delta, self.limiter._clock() if now is None else now
        )
