"""Rate limits, concurrency caps and budgets, exact across processes when the store is Redis.

Wiring: one limiter per process, opened in the lifespan (`open_limiter(config.limits)`) and closed
on exit (`aclose`, which also waits for settles in flight); one `RuleBook` per config version,
built with the runtime snapshot. A request handler, once it knows the caller and the endpoint and
before it calls upstream:

    rules = rule_book.for_call(principal.id, endpoint, principal.groups)
    max_tokens = body.get("max_tokens") or store_config.default_max_tokens
    try:
        reservation = await limiter.acquire(
            rules, tokens=prompt_tokens + max_tokens, cost_usd=price(prompt_tokens, max_tokens)
        )
    except LimitExceeded as e:       # 429 with e.headers() (Retry-After; none if too large);
        ...                          # e.kind == "budget" -> code budget_exceeded
    except LimitStoreUnavailable:    # log and count it, then per on_store_error:
        ...                          # deny -> 503; allow -> reservation = Reservation.uncounted()
    try:
        ...                          # call upstream; send reservation.headers() with the response
    finally:                         # also on errors, cancellation and client disconnects
        try:
            await reservation.settle(tokens=actual_tokens, cost_usd=actual_cost)
        except LimitStoreUnavailable:
            ...                      # log and count; leases and TTLs clean up after it
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.limits.base import (
    Limiter,
    LimitError,
    LimitExceeded,
    LimitStoreUnavailable,
    Reservation,
    Rule,
    RuleKind,
    format_duration,
)
from gateway.limits.memory import MemoryLimiter
from gateway.limits.rules import (
    RuleBook,
    endpoint_scope,
    group_scope,
    key_endpoint_scope,
    key_scope,
    rules_for,
)

if TYPE_CHECKING:
    from gateway.config.schema import LimitsStoreConfig

__all__ = [
    "LimitError",
    "LimitExceeded",
    "LimitStoreUnavailable",
    "Limiter",
    "MemoryLimiter",
    "Reservation",
    "Rule",
    "RuleBook",
    "RuleKind",
    "endpoint_scope",
    "format_duration",
    "group_scope",
    "key_endpoint_scope",
    "key_scope",
    "open_limiter",
    "rules_for",
]


def open_limiter(
    config: LimitsStoreConfig, *, namespace: str = "gw:rl:", lease_s: float = 600.0
) -> Limiter:
    """The limiter `config.store` names: "memory://" or "redis://host:port/db" (also rediss://,
    unix://). A Redis client is created here but connects on first use."""
    store = config.store
    if store == "memory://":
        return MemoryLimiter(lease_s=lease_s)
    if store.startswith(("redis://", "rediss://", "unix://")):
        # Imported here: a memory-only gateway never loads the Redis client.
        from gateway.limits.redis import RedisLimiter

        return RedisLimiter.from_url(store, namespace=namespace, lease_s=lease_s)
    raise ValueError(f"unsupported limits store {store!r}: use memory:// or redis://host:port/db")
