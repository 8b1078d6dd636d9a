"""Fallbacks: when an endpoint's retries are exhausted, or it is full (provisioned capacity or
its own limits), its `fallbacks` are tried in order."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

from gateway.errors import RateLimited, UpstreamError
from gateway.llm.endpoint import LLMEndpoint
from gateway.llm.types import Answer, Completed, LLMRequest, Streaming, plus_upstream_ms

Result = TypeVar("Result")


@dataclass(frozen=True, slots=True)
class Routed(Generic[Result]):
    result: Result
    endpoint: LLMEndpoint  # the one that answered
    fallback_used: bool


def chain(
    endpoint: LLMEndpoint, endpoints: Mapping[str, LLMEndpoint], allowed: Callable[[str], bool]
) -> list[LLMEndpoint]:
    """The endpoint, then its fallbacks: those configured with the same task that the caller
    may call itself (a fallback never lends a key an endpoint its policy does not allow)."""
    found = [endpoint]
    for name in endpoint.fallbacks:
        fallback = endpoints.get(name)
        if (
            fallback is not None
            and fallback.task == endpoint.task
            and fallback not in found
            and allowed(fallback.name)
        ):
            found.append(fallback)
    return found


# Admits the call on a fallback endpoint by that endpoint's own limits (RateLimited if full).
EnterFallback = Callable[[LLMEndpoint], Awaitable[None]]


async def _first_success(
    candidates: list[LLMEndpoint],
    call: Callable[[LLMEndpoint], Awaitable[Answer]],
    enter: EnterFallback,
) -> Routed[Answer]:
    last_error: UpstreamError | RateLimited | None = None
    failed_ms = 0.0  # spent on endpoints that failed: upstream time, not gateway overhead
    for position, candidate in enumerate(candidates):
        started = time.perf_counter()
        try:
            if position > 0:
                await enter(candidate)
            answer = await call(candidate)
        # A full endpoint (its capacity or its limits) or a failing upstream: the next candidate
        # may serve. A 4xx from the upstream (UpstreamRejected) is about the request itself: no
        # fallback would differ.
        except (UpstreamError, RateLimited) as error:
            last_error = error
            failed_ms += (time.perf_counter() - started) * 1000
            continue
        return Routed(plus_upstream_ms(answer, failed_ms), candidate, position > 0)
    assert last_error is not None
    raise last_error


async def complete(
    candidates: list[LLMEndpoint], request: LLMRequest, enter: EnterFallback
) -> Routed[Completed]:
    return await _first_success(candidates, lambda e: e.complete(request), enter)


async def open_stream(
    candidates: list[LLMEndpoint], request: LLMRequest, enter: EnterFallback
) -> Routed[Streaming]:
    return await _first_success(candidates, lambda e: e.open_stream(request), enter)
