"""Admission: every applicable rate limit, concurrency cap and budget, checked and counted in one
step before a call goes upstream, and settled to what the call really used when it ends.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from gateway.auth.keys import Principal
from gateway.errors import BudgetExceeded, NotReady, RateLimited
from gateway.limits import Limiter, LimitExceeded, LimitStoreUnavailable, Reservation, RuleBook
from gateway.metering.metrics import Metrics

logger = logging.getLogger(__name__)

UNLIMITED = Reservation.uncounted()


@dataclass(frozen=True, slots=True)
class Governor:
    """The process's limiter (its counters outlive config versions) with one version's rules."""

    limiter: Limiter
    rules: RuleBook
    on_store_error: str  # deny | allow
    metrics: Metrics

    async def admit(
        self,
        principal: Principal,
        endpoint: str,
        demand: Callable[[], Awaitable[tuple[int, float]]] | None = None,
        *,
        fallback: bool = False,
    ) -> Reservation:
        """A reservation to settle when the call ends; raises 429 (or 503) when refused.

        `demand` gives the worst case the call may use, (tokens, USD); it is only worked out
        when some rule applies. A `fallback` endpoint is admitted by its own rules only (the
        endpoint's, and this key's on it): the key's and groups' rules counted the call already.
        """
        # JWT subjects get no key's rules, even one whose id equals their subject.
        key_id = principal.id if principal.kind == "key" else f"{principal.kind}:{principal.id}"
        if fallback:
            rules = self.rules.for_endpoint(key_id, endpoint)
        else:
            rules = self.rules.for_call(key_id, endpoint, principal.groups)
        if not rules:
            return UNLIMITED
        tokens, cost_usd = await demand() if demand is not None else (0, 0.0)
        try:
            return await self.limiter.acquire(rules, tokens=tokens, cost_usd=cost_usd)
        except LimitExceeded as exc:
            scope_kind = exc.rule.scope.split(":", 1)[0]
            if exc.kind == "budget":
                self.metrics.budget_rejections.labels(scope_kind).inc()
                raise BudgetExceeded(
                    f"The {exc.rule.period} budget of {exc.rule.scope} is spent.",
                    retry_after_s=exc.retry_after_s,
                ) from exc
            self.metrics.limit_rejections.labels(scope_kind, exc.kind).inc()
            if exc.retry_after_s is None:
                raise RateLimited(
                    f"This request alone exceeds the {exc.kind} limit of {exc.rule.scope}"
                    f" ({exc.rule.limit:g}).",
                ) from exc
            raise RateLimited(
                f"Rate limit reached for {exc.rule.scope} ({exc.kind}).",
                retry_after_s=exc.retry_after_s,
            ) from exc
        except LimitStoreUnavailable as exc:
            outcome = "allowed" if self.on_store_error == "allow" else "denied"
            self.metrics.limit_store_errors.labels(outcome).inc()
            logger.warning("rate-limit store unavailable (%s): %s", outcome, exc)
            if outcome == "allowed":
                return Reservation.uncounted(tokens=tokens, cost_usd=cost_usd)
            raise NotReady("The rate-limit store is unavailable; try again shortly.") from exc

    async def settle(
        self, reservation: Reservation, *, tokens: int = 0, cost_usd: float = 0.0
    ) -> None:
        if reservation is UNLIMITED:
            return
        try:
            await reservation.settle(tokens=tokens, cost_usd=cost_usd)
        except LimitStoreUnavailable as exc:
            self.metrics.limit_store_errors.labels("settle_failed").inc()
            logger.warning("could not settle a rate-limit reservation: %s", exc)
