"""From config to rules: each scope's rules derived once per config version.

A call is limited by the rules of every scope it belongs to: its key, each of its groups (shared
by all members), its endpoint (shared by every caller), and its key on that endpoint.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from gateway.limits.base import Rule, RuleKind

if TYPE_CHECKING:
    from gateway.config.schema import BudgetConfig, GatewayConfig, LimitsConfig

# LimitsConfig field -> (kind, window in seconds)
_RATE_FIELDS: tuple[tuple[str, RuleKind, float], ...] = (
    ("requests_per_second", "requests", 1.0),
    ("requests_per_minute", "requests", 60.0),
    ("requests_per_hour", "requests", 3600.0),
    ("requests_per_day", "requests", 86_400.0),
    ("tokens_per_minute", "tokens", 60.0),
    ("tokens_per_day", "tokens", 86_400.0),
)


def key_scope(key_id: str) -> str:
    return f"key:{key_id}"


def group_scope(group: str) -> str:
    return f"group:{group}"


def endpoint_scope(endpoint: str) -> str:
    return f"endpoint:{endpoint}"


def key_endpoint_scope(key_id: str, endpoint: str) -> str:
    return f"key:{key_id}|endpoint:{endpoint}"


def rules_for(
    scope: str, limits: LimitsConfig | None, budget: BudgetConfig | None = None
) -> tuple[Rule, ...]:
    """The rules one scope's config sets (none when it sets nothing)."""
    rules: list[Rule] = []
    if limits is not None:
        for name, kind, window_s in _RATE_FIELDS:
            limit: float | None = getattr(limits, name)
            if limit is not None:
                rules.append(Rule(scope, kind, limit, window_s, algorithm=limits.algorithm))
        if limits.max_concurrent is not None:
            rules.append(Rule(scope, "concurrency", limits.max_concurrent, 0.0))
    if budget is not None:
        if budget.usd_per_day is not None:
            rules.append(Rule(scope, "budget", budget.usd_per_day, 0.0, "day"))
        if budget.usd_per_month is not None:
            rules.append(Rule(scope, "budget", budget.usd_per_month, 0.0, "month"))
    return tuple(rules)


class RuleBook:
    """Every configured scope's rules, built once per config version (it is immutable)."""

    def __init__(self, config: GatewayConfig) -> None:
        keys = config.auth.keys if config.auth is not None else ()
        self._keys = {k.id: rules_for(key_scope(k.id), k.limits, k.budget) for k in keys}
        self._key_groups = {k.id: k.groups for k in keys}
        self._key_endpoints = {
            (k.id, name): rules_for(key_endpoint_scope(k.id, name), limits)
            for k in keys
            for name, limits in k.endpoint_limits.items()
        }
        self._groups = {
            name: rules_for(group_scope(name), group.limits, group.budget)
            for name, group in config.groups.items()
        }
        self._endpoints = {
            e.name: rules_for(endpoint_scope(e.name), e.limits) for e in config.endpoints
        }
        every = [
            *self._keys.values(),
            *self._key_endpoints.values(),
            *self._groups.values(),
            *self._endpoints.values(),
        ]
        # Whether any call reserves tokens or spend: then every prompt is counted.
        self.reserves_tokens = any(r.kind in ("tokens", "budget") for rs in every for r in rs)
        self.has_rules = any(every)

    def for_endpoint(self, key_id: str, endpoint: str) -> tuple[Rule, ...]:
        """The rules of one endpoint alone: its own, and this key's on it."""
        return self._key_endpoints.get((key_id, endpoint), ()) + self._endpoints.get(endpoint, ())

    def for_call(
        self, key_id: str, endpoint: str, groups: Sequence[str] | None = None
    ) -> tuple[Rule, ...]:
        """The rules of one call: `groups` defaults to the configured key's groups (a JWT
        subject brings its own)."""
        rules = self._keys.get(key_id, ()) + self._key_endpoints.get((key_id, endpoint), ())
        if groups is None:
            groups = self._key_groups.get(key_id, ())
        seen: set[str] = set()
        for group in groups:
            if group not in seen:  # a group listed twice must not be counted twice
                seen.add(group)
                rules += self._groups.get(group, ())
        return rules + self._endpoints.get(endpoint, ())
