"""The in-process limiter: exact within one process, for single-process deployments and tests.

Every method runs on one event loop and never awaits between reading and writing its state, so a
check-and-count is atomic without locks. The arithmetic mirrors the Lua of `scripts.py` line for
line; the shared test suite holds the two to the same behaviour.
"""

from __future__ import annotations

import secrets
import time
from bisect import insort
from collections import deque
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
    """GCRA state: the level in units, when it was last updated, how fast it drains."""

    __slots__ = ("last", "level", "rate")

    def __init__(self, level: float, last: float, rate: float) -> None:
        self.level = level
        self.last = last
        self.rate = rate

    def drained(self, now: float) -> float:
        if now <= self.last:
            return self.level
        return max(self.level - (now - self.last) * self.rate, 0.0)


class _Entry:
    __slots__ = ("amount", "at", "id")

    def __init__(self, at: float, amount: float, id: str) -> None:
        self.at = at
        self.amount = amount
        self.id = id


def _entry_time(entry: _Entry) -> float:
    return entry.at


class _Log:
    """A sliding window: the entries it admitted, oldest first, and the sum of their amounts.

    Redis keeps the same as a sorted set (id -> time) and, for tokens, a hash (id -> amount,
    "used" -> the sum). Entries settled to nothing are dropped (here lazily, from the head).
    """

    __slots__ = ("entries", "index", "span_s", "used")

    def __init__(self, span_s: float) -> None:
        self.span_s = span_s
        self.entries: deque[_Entry] = deque()
        self.index: dict[str, _Entry] = {}  # reservation id -> its entry (token windows only)
        self.used = 0.0  # sums of whole units: exact in floating point

    def expire(self, now: float) -> None:
        cutoff = now - self.span_s  # an entry admitted at t counts while now - t < span_s
        entries = self.entries
        while entries and (entries[0].at <= cutoff or entries[0].amount <= 0):
            gone = entries.popleft()
            self.used -= gone.amount
            self.index.pop(gone.id, None)

    def wait(self, amount: float, capacity: float, now: float) -> float:
        """Seconds until enough of the oldest entries leave for `amount` more to fit."""
        need = self.used + amount - capacity
        for entry in self.entries:
            need -= entry.amount
            if need <= 0:
                return entry.at + self.span_s - now
        return 0.0  # unreachable: the caller checked that `amount` alone fits

    def reset(self, now: float) -> float:
        """Seconds until the oldest entry leaves (0 when the window is empty)."""
        return self.entries[0].at + self.span_s - now if self.entries else 0.0

    def add(self, at: float, amount: float, id: str, *, indexed: bool) -> None:
        entry = _Entry(at, amount, id)
        if self.entries and self.entries[-1].at > at:  # an injected clock went back
            insort(self.entries, entry, key=_entry_time)
        else:
            self.entries.append(entry)
        self.used += amount
        if indexed:
            self.index[id] = entry

    def settle(self, id: str, delta: float, now: float) -> None:
        """Change a reservation's amount; a charge after its entry left counts from `now`."""
        self.expire(now)
        entry = self.index.get(id)
        if entry is None:
            if delta > 0:
                self.add(now, delta, id, indexed=True)
            return
        amount = max(entry.amount + delta, 0.0)
        self.used += amount - entry.amount
        entry.amount = amount
        if amount <= 0:
            del self.index[id]  # what is left of it is dropped when it reaches the head


class MemoryLimiter:
    """A `Limiter` holding its state in dicts; `clock` is wall time (budgets follow UTC dates)."""

    def __init__(self, *, lease_s: float = 600.0, clock: Callable[[], float] = time.time) -> None:
        self._lease_s = lease_s
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}  # rule key -> GCRA state
        self._logs: dict[str, _Log] = {}  # rule key -> sliding window state
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
            if (rule.kind == "requests" or rule.kind == "tokens") and rule.algorithm == "gcra":
                amount = 1.0 if rule.kind == "requests" else float(tokens)
                bucket = self._buckets.get(rule.key)
                value = (0.0 if bucket is None else bucket.drained(now)) + amount
                if value > rule.capacity * (1 + EPSILON):
                    too_big = amount > rule.capacity * (1 + EPSILON)
                    wait = None if too_big else (value - rule.capacity) / rule.rate
                reset = value / rule.rate
            elif rule.kind == "requests" or rule.kind == "tokens":
                amount = 1.0 if rule.kind == "requests" else float(tokens)
                log = self._logs.get(rule.key)
                if log is not None:
                    log.expire(now)
                value = (0.0 if log is None else log.used) + amount
                if value > rule.capacity:  # whole units: no slack needed
                    if amount > rule.capacity:
                        wait = None
                    else:
                        assert log is not None  # something else fills the window
                        wait = log.wait(amount, rule.capacity, now)
                if log is not None and log.entries:
                    reset = log.reset(now)
                elif amount > 0:
                    reset = rule.span_s  # this call's entry is the oldest
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
            if (rule.kind == "requests" or rule.kind == "tokens") and rule.algorithm == "gcra":
                self._buckets[rule.key] = _Bucket(value, now, rule.rate)
                remaining.append(rule.capacity - value)
            elif rule.kind == "requests" or rule.kind == "tokens":
                amount = 1.0 if rule.kind == "requests" else float(tokens)
                if amount > 0:  # an entry of nothing would change no sum
                    log = self._logs.get(rule.key)
                    if log is None:
                        log = self._logs[rule.key] = _Log(rule.span_s)
                    log.add(now, amount, rid, indexed=rule.kind == "tokens")
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
            if rule.kind == "tokens" and tokens_delta and rule.algorithm == "gcra":
                bucket = self._buckets.get(rule.key)
                level = 0.0 if bucket is None else bucket.drained(now)
                # A refund cannot move the TAT before now: what has drained is gone.
                self._buckets[rule.key] = _Bucket(max(level + tokens_delta, 0.0), now, rule.rate)
            elif rule.kind == "tokens" and tokens_delta:
                log = self._logs.get(rule.key)
                if log is None and tokens_delta > 0:
                    log = self._logs[rule.key] = _Log(rule.span_s)
                if log is not None:
                    log.settle(reservation.id, float(tokens_delta), now)
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
        """Drop state that no longer says anything: drained buckets, empty windows, ended budget
        periods."""
        self._next_sweep = now + _SWEEP_EVERY_S
        for key in [k for k, bucket in self._buckets.items() if bucket.drained(now) <= 0]:
            del self._buckets[key]
        for log in self._logs.values():
            log.expire(now)
        for key in [k for k, log in self._logs.items() if not log.entries]:
            del self._logs[key]
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
