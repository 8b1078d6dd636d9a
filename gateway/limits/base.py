"""What every limiter shares: rules, the reservation a call holds, the errors, the header format.

The algorithms, implemented twice (in-process in `memory.py`, as Lua in `scripts.py`):

- requests and tokens, by default (`algorithm: sliding_window`): an exact sliding log. Each rule
  keeps the calls it admitted in its last `window_s` seconds, one entry per call (time, amount,
  reservation id), dropping entries lazily once they are `window_s` old. A call of `n` units is
  admitted only if the units in the window, its own included, stay within the limit, so no window
  of that length ever holds more than the limit: 10 per second admits 10 from idle, then the next
  call only when the first of them is a second old. Settling a token reservation changes its
  entry's amount (a refund makes room at once; a charge beyond the reservation counts too, as a
  new entry at settle time if the reservation's own has left the window). Refused calls wait
  until enough of the oldest entries leave. Arithmetic is on whole units, so it needs no slack.
  Memory (per rule, in the process or in Redis): one entry per admitted request in the window,
  so at most `limit` of them; one per token reservation admitted in the window, so at most one per
  call (Redis drops entries settled to nothing at once, memory once they reach the head of the
  window). Cost per call: O(log n) in Redis's sorted sets, O(1)
  in memory, plus O(1) amortised per entry that leaves; a refused call finds its Retry-After from
  the oldest entries (one look-up for requests, a walk until enough tokens would leave).
  A request limit below one (0.5 per minute) is one request per stretched window (two minutes);
  a fractional one above (2.5 per second) admits the whole requests that fit (2).
- requests and tokens, `algorithm: gcra`: GCRA in its continuous-state leaky bucket form. A
  rule's bucket holds `level` units and drains at `limit / window_s` units per second; a call of
  `n` units is admitted when `level + n <= capacity`, and then `level += n`. Capacity is the limit
  itself, so 100 RPM admits 100 at once and then one every 0.6 s: smooth, O(1) state, but a window
  of `window_s` can hold up to twice the limit (the burst plus what drains meanwhile). The level
  is the theoretical arrival time's lead over now (TAT - now) expressed in units instead of
  seconds, which keeps sums of whole requests exact in floating point (TATs near 1.7e9 s are not).
- concurrency: one slot per reservation, held under a lease that expires after `lease_s`, so a
  crashed process's slots free themselves.
- budgets: USD spent in the UTC calendar day / month containing the call, one counter per period.

Tokens and spend are reserved at acquire (the worst case: prompt + max_tokens, its price) and
settled to the actual figures afterwards, so concurrent calls can never be admitted past a limit
on the strength of usage that has not been reported yet.

Headers: `x-ratelimit-remaining-*` is the limit minus what the window (or bucket) holds right
after the call; `x-ratelimit-reset-*` is, for a sliding window, the time until its oldest entry
leaves (when room next grows: for a full request limit, when the next call fits), and for GCRA
the time until the bucket has drained empty.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Generic, Literal, Protocol, TypeVar

RuleKind = Literal["requests", "tokens", "concurrency", "budget"]
Algorithm = Literal["sliding_window", "gcra"]  # how requests and tokens rules count
Period = Literal["day", "month"]

# A full concurrency scope has no predictable reset (slots free when calls end): a hint only.
CONCURRENCY_RETRY_S = 1.0
# Relative slack on comparisons, so float noise cannot refuse a call that fits: epoch seconds near
# 1.7e9 carry ~2.4e-7 s of rounding, 2.4e-7 of a limit with a 1 s window. It never adds up to a
# whole extra request.
EPSILON = 1e-6
# Budget counters outlive their period by this much: a call that straddles midnight settles into
# the period it reserved from, and operators can still read yesterday's spend.
BUDGET_GRACE_S = 86_400.0

_HEADER_KINDS: tuple[tuple[RuleKind, bytes], ...] = (
    ("requests", b"requests"),
    ("tokens", b"tokens"),
)
_WINDOW_NAMES = {1.0: "second", 60.0: "minute", 3600.0: "hour", 86_400.0: "day"}


@dataclass(frozen=True, slots=True)
class Rule:
    """One limit of one scope, derived from config once per config version.

    `scope` names who shares the limit: "key:app-1", "group:team-a", "endpoint:llama",
    "key:app-1|endpoint:llama". For budgets `window_s` is 0 and `period` names the calendar period.
    `algorithm` applies to requests and tokens rules only.
    """

    scope: str
    kind: RuleKind
    limit: float  # requests or tokens per window; concurrent slots; USD per period
    window_s: float  # the rate window; 0 for concurrency and budgets
    period: Period | None = None
    algorithm: Algorithm = "sliding_window"
    # Derived once here so the hot path never recomputes them.
    key: str = field(init=False, compare=False, repr=False)  # the store's name for its state
    # Redis only: a sliding token window's entry amounts (a hash beside the key's sorted set).
    amounts_key: str = field(init=False, compare=False, repr=False)
    capacity: float = field(init=False, compare=False, repr=False)  # units held at most
    rate: float = field(init=False, compare=False, repr=False)  # GCRA: units drained per second
    span_s: float = field(init=False, compare=False, repr=False)  # sliding window: its length

    def __post_init__(self) -> None:
        if self.limit <= 0:
            raise ValueError("a limit must be positive")
        amounts_key, rate, span_s = "", 0.0, 0.0
        if self.kind in ("requests", "tokens"):
            if self.window_s <= 0:
                raise ValueError(f"a {self.kind} rule needs a positive window")
            rate = self.limit / self.window_s
            # 0.5 requests per minute means one every two minutes, not never: the sliding window
            # stretches to hold one whole request; GCRA's bucket holds one and drains at the rate.
            capacity = max(self.limit, 1.0) if self.kind == "requests" else self.limit
            span_s = self.window_s * capacity / self.limit
            name = f"{self.kind}:{self.window_s:g}:{self.scope}"
            if self.algorithm == "gcra":
                key = name  # the names GCRA state always had, so an upgrade keeps it
            else:
                key = f"window:{name}"
                if self.kind == "tokens":
                    amounts_key = f"amounts:{name}"
        elif self.kind == "budget":
            if self.period is None:
                raise ValueError("a budget rule needs a period")
            key, capacity = f"budget:{self.scope}", self.limit
        else:
            key, capacity = f"concurrency:{self.scope}", self.limit
        object.__setattr__(self, "key", key)
        object.__setattr__(self, "amounts_key", amounts_key)
        object.__setattr__(self, "rate", rate)
        object.__setattr__(self, "capacity", capacity)
        object.__setattr__(self, "span_s", span_s)

    def describe(self) -> str:
        if self.kind == "budget":
            return f"budget of {self.limit:g} USD per {self.period}"
        if self.kind == "concurrency":
            return f"{self.limit:g} concurrent calls"
        window = _WINDOW_NAMES.get(self.window_s, f"{self.window_s:g} s")
        return f"{self.limit:g} {self.kind} per {window}"


class LimitError(Exception):
    """Root of the limiter's errors."""


class LimitExceeded(LimitError):
    """A rule refused the call; nothing was counted.

    `rule` is the tightest of the refusing rules (the one to wait longest for). `retry_after_s` is
    None when the call can never pass as asked: its reservation exceeds the rule's whole capacity
    (callers should answer without a Retry-After and say the request is too large).
    Callers answer 429; `kind == "budget"` with the code `budget_exceeded`.
    """

    def __init__(self, rule: Rule, retry_after_s: float | None) -> None:
        self.rule = rule
        self.retry_after_s = retry_after_s
        if retry_after_s is None:
            text = f"{rule.scope}: the request alone exceeds the {rule.describe()}"
        else:
            wait = format_duration(retry_after_s)
            text = f"{rule.scope}: {rule.describe()} exceeded; retry in {wait}"
        super().__init__(text)

    @property
    def kind(self) -> RuleKind:
        return self.rule.kind

    def headers(self) -> list[tuple[bytes, bytes]]:
        """Retry-After in whole seconds, rounded up (none when waiting cannot help)."""
        if self.retry_after_s is None:
            return []
        return [(b"retry-after", str(max(1, math.ceil(self.retry_after_s))).encode())]


class LimitStoreUnavailable(LimitError):
    """The store failed or did not answer in time.

    Callers apply `on_store_error`: deny (answer 503) or allow (admit with `Reservation.uncounted`);
    either way they log and count it.
    """


class Reservation:
    """What one admitted call holds: its reserved tokens and spend, its concurrency slots.

    The base class is the reservation of a call no rule applies to, or one admitted uncounted
    because the store failed; the stores subclass it.
    """

    __slots__ = ("_remaining", "_reset_s", "_settled", "cost_usd", "id", "rules", "tokens")

    def __init__(
        self,
        rules: Sequence[Rule],
        *,
        id: str,
        tokens: int,
        cost_usd: float,
        remaining: Sequence[float],
        reset_s: Sequence[float],
    ) -> None:
        self.rules = rules
        self.id = id
        self.tokens = tokens
        self.cost_usd = cost_usd
        self._remaining = remaining  # per rule, right after this call was counted
        self._reset_s = reset_s  # per rule: seconds until it is back to its initial state
        self._settled = False

    @classmethod
    def uncounted(cls, *, tokens: int = 0, cost_usd: float = 0.0) -> Reservation:
        return cls((), id="", tokens=tokens, cost_usd=cost_usd, remaining=(), reset_s=())

    async def settle(self, *, tokens: int, cost_usd: float, now: float | None = None) -> None:
        """Reconcile the reservation with actual usage and release the concurrency slots.

        Refunds (or charges) `tokens - reserved` and `cost_usd - reserved`. Idempotent; safe in a
        `finally` after cancellation: the store's work is shielded, so a second cancellation
        cannot leave a slot held. Raises LimitStoreUnavailable if the store failed; the
        reservation then counts as settled anyway (its slots free when their lease expires).
        """
        if self._settled:
            return
        self._settled = True  # before any await: a concurrent second call must not settle again
        await self._release(tokens - self.tokens, cost_usd - self.cost_usd, now)

    async def _release(self, tokens_delta: int, cost_delta: float, now: float | None) -> None:
        """The store's part of settling: nothing for a reservation nobody counted."""

    def headers(self) -> list[tuple[bytes, bytes]]:
        """OpenAI-style x-ratelimit-* headers of the tightest request and token rules, and
        x-budget-remaining-usd of the tightest budget, as they stood when this call was counted."""
        out: list[tuple[bytes, bytes]] = []
        for kind, suffix in _HEADER_KINDS:
            index = self._tightest(kind)
            if index is not None:
                rule = self.rules[index]
                out.append((b"x-ratelimit-limit-" + suffix, _number(rule.limit).encode()))
                remaining = max(0, math.floor(self._remaining[index] + EPSILON))
                out.append((b"x-ratelimit-remaining-" + suffix, str(remaining).encode()))
                reset = format_duration(self._reset_s[index])
                out.append((b"x-ratelimit-reset-" + suffix, reset.encode()))
        index = self._tightest("budget")
        if index is not None:
            value = f"{max(0.0, self._remaining[index]):.6f}"
            out.append((b"x-budget-remaining-usd", value.encode()))
        return out

    def _tightest(self, kind: RuleKind) -> int | None:
        """The rule of `kind` with the least room left (on a tie, the one slowest to reset)."""
        best: int | None = None
        for index, rule in enumerate(self.rules):
            if rule.kind != kind:
                continue
            if best is None or (self._remaining[index], -self._reset_s[index]) < (
                self._remaining[best],
                -self._reset_s[best],
            ):
                best = index
        return best


class Limiter(Protocol):
    async def acquire(
        self,
        rules: Sequence[Rule],
        *,
        tokens: int = 0,
        cost_usd: float = 0.0,
        now: float | None = None,
    ) -> Reservation:
        """One atomic check-and-count of all `rules` (their keys must be distinct).

        Either every rule admits and all are counted (one request, `tokens` reserved tokens, one
        concurrency slot, `cost_usd` reserved spend), or nothing is counted and LimitExceeded
        names the tightest refusing rule. `now` (epoch seconds) is for tests; by default the
        store's clock is used. Raises LimitStoreUnavailable when the store fails.
        """
        ...

    async def aclose(self) -> None: ...


def format_duration(seconds: float) -> str:
    """OpenAI's reset format: "20ms", "1s", "1.5s", "6m0s", "1h2m3s" (rounded up to the ms)."""
    ms = max(0, math.ceil(seconds * 1000 - 1e-6))
    if ms < 1000:
        return f"{ms}ms"
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs = str(ms // 1000) if ms % 1000 == 0 else f"{ms / 1000:.3f}".rstrip("0")
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def period_of(period: Period, now: float) -> tuple[str, float]:
    """The UTC calendar period containing `now`: its label ("2026-11-25", "2026-11") and end."""
    day = datetime.fromtimestamp(now, UTC).date()
    if period == "day":
        ends = (day.toordinal() - _EPOCH_ORDINAL + 1) * 86_400.0
        return day.isoformat(), ends
    year, month = (day.year + 1, 1) if day.month == 12 else (day.year, day.month + 1)
    ends = (date(year, month, 1).toordinal() - _EPOCH_ORDINAL) * 86_400.0
    return f"{day.year:04d}-{day.month:02d}", ends


_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()


def rejection(rules: Sequence[Rule], waits: Sequence[tuple[int, float | None]]) -> LimitExceeded:
    """The error for refusals (rule index, wait; None = never): the longest wait wins."""
    index, wait = max(waits, key=lambda item: math.inf if item[1] is None else item[1])
    return LimitExceeded(rules[index], wait)


def _number(value: float) -> str:
    return str(int(value)) if value == int(value) else f"{value:g}"


def keep_alive(tasks: set[asyncio.Task[None]], task: asyncio.Task[None]) -> None:
    """Hold a strong reference to a background task until it finishes (asyncio keeps weak ones)."""
    tasks.add(task)
    task.add_done_callback(tasks.discard)


StoreT = TypeVar("StoreT")


class StoreReservation(Reservation, Generic[StoreT]):
    """A reservation counted in a store (memory or Redis): it keeps that store, and the budget
    keys it was charged under (they name a period, so a settle after midnight finds them)."""

    __slots__ = ("budget_keys", "limiter")

    def __init__(
        self,
        limiter: StoreT,
        rules: Sequence[Rule],
        *,
        id: str,
        tokens: int,
        cost_usd: float,
        remaining: Sequence[float],
        reset_s: Sequence[float],
        budget_keys: list[str],
    ) -> None:
        super().__init__(
            rules, id=id, tokens=tokens, cost_usd=cost_usd, remaining=remaining, reset_s=reset_s
        )
        self.limiter = limiter
        self.budget_keys = budget_keys
