"""An LLM endpoint: a backend plus the endpoint's policy (timeout, retries, capacity, price).

Sending is layered, one concern per function: fallbacks (`fallbacks.py`) → retries (here) →
one attempt (the backend, `gateway/providers/`) → transport (aiohttp or litellm).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable

from gateway.config.schema import LLMEndpointConfig, Task
from gateway.errors import (
    CapacityFull,
    UpstreamCredentialsRefused,
    UpstreamError,
    UpstreamRateLimited,
)
from gateway.llm.types import Answer, Completed, LLMRequest, Streaming, plus_upstream_ms
from gateway.metering.pricing import price_for
from gateway.metering.usage import Price
from gateway.providers import backend_for
from gateway.providers.base import LLMBackend
from gateway.providers.http_pool import SessionPool

BACKOFF_BASE_S = 0.1
BACKOFF_CAP_S = 2.0
RETRY_AFTER_CAP_S = 10.0


class LLMEndpoint:
    kind = "llm"

    def __init__(
        self,
        name: str,
        task: Task,
        backend: LLMBackend,
        *,
        price: Price | None,
        timeout_s: float,
        retries: int,
        fallbacks: tuple[str, ...] = (),
        max_concurrent: int | None = None,
        queue_timeout_s: float = 1.0,
    ) -> None:
        self.name = name
        self.task = task
        self.backend = backend
        self.price = price
        self.timeout_s = timeout_s
        self.retries = retries
        self.fallbacks = fallbacks
        self._capacity = asyncio.Semaphore(max_concurrent) if max_concurrent else None
        self._queue_timeout_s = queue_timeout_s

    @classmethod
    def from_config(cls, config: LLMEndpointConfig, sessions: SessionPool) -> LLMEndpoint:
        """ValueError when the config cannot be served (a provider that needs an api_base)."""
        provisioned = config.provisioned
        return cls(
            config.name,
            config.task,
            backend_for(config, sessions),
            price=price_for(config),
            timeout_s=config.timeout_s,
            retries=config.retries,
            fallbacks=config.fallbacks,
            max_concurrent=provisioned.max_concurrent if provisioned else None,
            queue_timeout_s=provisioned.queue_timeout_s if provisioned else 1.0,
        )

    def describe(self) -> dict[str, object]:
        return {"task": self.task, "fallbacks": list(self.fallbacks), **self.backend.describe()}

    async def _acquire(self) -> Callable[[], Awaitable[None]]:
        """A provisioned-capacity slot, held for the whole call (a stream's until it ends)."""
        if self._capacity is None:
            return _nothing
        try:
            async with asyncio.timeout(self._queue_timeout_s):
                await self._capacity.acquire()
        except TimeoutError as exc:
            raise CapacityFull(
                f"Endpoint {self.name!r} is at its provisioned capacity; retry shortly.",
                retry_after_s=1,
            ) from exc
        capacity = self._capacity
        released = False

        async def release() -> None:
            nonlocal released
            if not released:
                released = True
                capacity.release()

        return release

    async def complete(self, request: LLMRequest) -> Completed:
        release = await self._acquire()
        try:
            return await self._with_retries(lambda: self.backend.complete(request, self.timeout_s))
        finally:
            await release()

    async def open_stream(self, request: LLMRequest) -> Streaming:
        release = await self._acquire()
        try:
            # Retries only before the first byte reaches the client: until the stream is open.
            streaming = await self._with_retries(
                lambda: self.backend.open_stream(request, self.timeout_s)
            )
        except BaseException:
            await release()
            raise
        streaming.closers.append(release)
        return streaming

    async def _with_retries(self, attempt: Callable[[], Awaitable[Answer]]) -> Answer:
        failed_ms = 0.0  # failed attempts and backoff: upstream time, not gateway overhead
        for number in range(self.retries + 1):
            started = time.perf_counter()
            try:
                answer = await attempt()
            except UpstreamError as error:
                if number == self.retries or isinstance(error, UpstreamCredentialsRefused):
                    raise
                await asyncio.sleep(_backoff_s(number, error))
                failed_ms += (time.perf_counter() - started) * 1000
                continue
            return plus_upstream_ms(answer, failed_ms)
        raise AssertionError("unreachable")  # pragma: no cover

    async def aclose(self) -> None:
        await self.backend.aclose()


async def _nothing() -> None:
    return None


def _backoff_s(attempt: int, error: UpstreamError) -> float:
    if isinstance(error, UpstreamRateLimited) and error.retry_after_s is not None:
        return min(error.retry_after_s, RETRY_AFTER_CAP_S)
    # Exponential backoff with full jitter.
    return random.uniform(0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2**attempt))
