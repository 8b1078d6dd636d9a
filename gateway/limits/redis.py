"""The Redis limiter: exact across every gateway process that shares one Redis.

A call's check-and-count of all its rules is one Lua script (one round trip, atomic on the
server); settling is another. Both read the server's clock (TIME), so gateway hosts with skewed
clocks still agree. Keys (under the namespace, "gw:rl:" by default) expire once idle:

    window:requests:<window_s>:<scope>       zset reservation id -> admitted at (sliding window)
    window:tokens:<window_s>:<scope>         zset reservation id -> admitted at (sliding window)
    amounts:tokens:<window_s>:<scope>        hash reservation id -> tokens, "used" -> their sum
    requests:<window_s>:<scope>              hash {l: level in requests, t: last update} (GCRA)
    tokens:<window_s>:<scope>                hash {l: level in tokens, t: last update} (GCRA)
    concurrency:<scope>                      zset reservation id -> lease end (epoch s)
    budget:<scope>:day:2026-11-25            string, USD spent (reserved + settled)
    budget:<scope>:month:2026-11             string, USD spent

Budget keys are named by the script from the server's clock, so it computes UTC dates itself.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Coroutine, Sequence

import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from gateway.limits.base import (
    LimitExceeded,
    LimitStoreUnavailable,
    Reservation,
    Rule,
    StoreReservation,
    keep_alive,
)
from gateway.limits.scripts import ACQUIRE, SETTLE

logger = logging.getLogger(__name__)

_Reply = list[bytes | int]  # what the scripts return (redis-py decodes nothing)


class RedisLimiter:
    """A `Limiter` over a shared Redis. Store failures raise LimitStoreUnavailable."""

    def __init__(
        self,
        client: redis.asyncio.Redis,
        *,
        namespace: str = "gw:rl:",
        lease_s: float = 600.0,
        close_client: bool = False,
    ) -> None:
        self.namespace = namespace
        self._client = client
        self._close_client = close_client
        self._lease_s = lease_s
        # register_script runs EVALSHA and, on NOSCRIPT (a restarted or flushed Redis), loads
        # the script and retries once.
        self._acquire_script = client.register_script(ACQUIRE)
        self._settle_script = client.register_script(SETTLE)
        self._pending: set[asyncio.Task[None]] = set()  # shielded settles still running

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        namespace: str = "gw:rl:",
        lease_s: float = 600.0,
        timeout_s: float = 0.5,
        max_connections: int = 64,
    ) -> RedisLimiter:
        # No client-side retries: replaying a script that timed out could count a call twice,
        # and a caller waiting on a dead store should hear so within about a second. A burst of
        # calls queues for a pooled connection (up to timeout_s) instead of failing outright.
        pool = redis.asyncio.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=timeout_s,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
        )
        client = redis.asyncio.Redis.from_pool(pool)
        return cls(client, namespace=namespace, lease_s=lease_s, close_client=True)

    async def acquire(
        self,
        rules: Sequence[Rule],
        *,
        tokens: int = 0,
        cost_usd: float = 0.0,
        now: float | None = None,
    ) -> Reservation:
        rid = secrets.token_hex(12)
        if not rules:
            return Reservation(
                (), id=rid, tokens=tokens, cost_usd=cost_usd, remaining=(), reset_s=()
            )
        ns = self.namespace
        keys: list[str] = []
        args: list[str | int | float] = ["" if now is None else now, rid, self._lease_s]
        for rule in rules:
            keys.append(ns + rule.key)
            if rule.kind == "requests" or rule.kind == "tokens":
                amount = 1 if rule.kind == "requests" else tokens
                if rule.algorithm == "gcra":
                    args += ("gcra", amount, rule.capacity, rule.rate)
                else:
                    args += (rule.kind, amount, rule.capacity, rule.span_s)
                    if rule.amounts_key:
                        keys.append(ns + rule.amounts_key)
            elif rule.kind == "concurrency":
                args += ("concurrency", 1, rule.capacity, "")
            else:
                args += ("budget", cost_usd, rule.capacity, rule.period or "")
        call = asyncio.ensure_future(_run(self._acquire_script, keys, args))
        try:
            reply = await asyncio.shield(call)
        except asyncio.CancelledError:
            # The script may have counted the call already: give back what it took.
            call.add_done_callback(lambda done: self._undo(done, rules, rid, tokens, cost_usd))
            raise
        return self._reservation(reply, rules, rid, tokens, cost_usd)

    def _reservation(
        self, reply: _Reply, rules: Sequence[Rule], rid: str, tokens: int, cost_usd: float
    ) -> _RedisReservation:
        if reply[0] == 0:
            wait = float(reply[2])
            raise LimitExceeded(rules[int(reply[1]) - 1], None if wait < 0 else wait)
        fields = reply[1:]
        return _RedisReservation(
            self,
            rules,
            id=rid,
            tokens=tokens,
            cost_usd=cost_usd,
            remaining=[float(x) for x in fields[0::3]],
            reset_s=[float(x) for x in fields[1::3]],
            budget_keys=[key.decode() for key in fields[2::3] if isinstance(key, bytes) and key],
        )

    def _undo(
        self,
        done: asyncio.Future[_Reply],
        rules: Sequence[Rule],
        rid: str,
        tokens: int,
        cost_usd: float,
    ) -> None:
        if done.cancelled() or done.exception() is not None or done.result()[0] == 0:
            return  # nothing was counted
        reservation = self._reservation(done.result(), rules, rid, tokens, cost_usd)
        giving_back = _quietly(reservation.settle(tokens=0, cost_usd=0.0))
        keep_alive(self._pending, asyncio.ensure_future(giving_back))

    async def _settle(self, keys: list[str], args: list[str | int | float]) -> None:
        call = asyncio.ensure_future(_run_settle(self._settle_script, keys, args))
        keep_alive(self._pending, call)
        try:
            await asyncio.shield(call)
        except asyncio.CancelledError:
            call.add_done_callback(_report_orphan)  # nobody awaits it any more
            raise

    async def aclose(self) -> None:
        """Wait for settles still in flight, then close the client if this limiter opened it."""
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
        if self._close_client:
            await self._client.aclose()


class _RedisReservation(StoreReservation["RedisLimiter"]):
    __slots__ = ()

    async def _release(self, tokens_delta: int, cost_delta: float, now: float | None) -> None:
        ns = self.limiter.namespace
        keys: list[str] = []
        args: list[str | int | float] = ["" if now is None else now, self.id, tokens_delta]
        args.append(cost_delta)
        budgets = iter(self.budget_keys)
        for rule in self.rules:
            if rule.kind == "tokens" and tokens_delta and rule.algorithm == "gcra":
                keys.append(ns + rule.key)
                args += ("gcra", rule.rate)
            elif rule.kind == "tokens" and tokens_delta:
                keys += (ns + rule.key, ns + rule.amounts_key)
                args += ("tokens", rule.span_s)
            elif rule.kind == "concurrency":
                keys.append(ns + rule.key)
                args += ("concurrency", 0)
            elif rule.kind == "budget":
                key = next(budgets)
                if cost_delta:
                    keys.append(key)
                    args += ("budget", 0)
        if keys:  # an exact reservation without slots costs no round trip
            await self.limiter._settle(keys, args)


async def _run(script: AsyncScript, keys: list[str], args: list[str | int | float]) -> _Reply:
    try:
        reply: _Reply = await script(keys, args)
    except (RedisError, OSError) as e:
        raise LimitStoreUnavailable(f"the rate-limit store failed: {e!r}") from e
    return reply


async def _run_settle(script: AsyncScript, keys: list[str], args: list[str | int | float]) -> None:
    await _run(script, keys, args)  # a task of its own, so a cancelled caller cannot stop it


async def _quietly(settling: Coroutine[None, None, None]) -> None:
    """Await a settle nobody else will, and report (not raise) its failure."""
    try:
        await settling
    except LimitStoreUnavailable as e:
        logger.warning("could not give back a cancelled call's reservation: %s", e)


def _report_orphan(done: asyncio.Future[None]) -> None:
    if not done.cancelled() and done.exception() is not None:
        logger.warning("settling a cancelled call's reservation failed: %s", done.exception())
