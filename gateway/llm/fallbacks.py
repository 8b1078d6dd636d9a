"""Fallbacks: when an endpoint's retries are exhausted, its `fallbacks` are tried in order."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

from gateway.errors import CapacityFull, UpstreamError
from gateway.llm.endpoint import LLMEndpoint
from gateway.llm.types import Answer, Completed, LLMRequest, Streaming, plus_upstream_ms

Result = TypeVar("Result")


@dataclass(frozen=True, slots=True)
class Routed(Generic[Result]):
    result: Result
    endpoint: LLMEndpoint  # the one that answered
    fallback_used: bool


def chain(endpoint: LLMEndpoint, endpoints: Mapping[str, LLMEndpoint]) -> list[LLMEndpoint]:
    """The endpoint, then its fallbacks (only those configured with the same task)."""
    found = [endpoint]
    for name in endpoint.fallbacks:
        fallback = endpoints.get(name)
        if fallback is not None and fallback.task == endpoint.task and fallback not in found:
            found.append(fallback)
    return found


async def _first_success(
    candidates: list[LLMEndpoint], call: Callable[[LLMEndpoint], Awaitable[Answer]]
) -> Routed[Answer]:
    last_error: UpstreamError | CapacityFull | None = None
    failed_ms = 0.0  # spent on endpoints that failed: upstream time, not gateway overhead
    for position, candidate in enumerate(candidates):
        started = time.perf_counter()
        try:
            answer = await call(candidate)
        # A full endpoint or a failing upstream: the next candidate may serve. A 4xx from the
        # upstream (UpstreamRejected) is about the request itself: no fallback would differ.
        except (UpstreamError, CapacityFull) as error:
            last_error = error
            failed_ms += (time.perf_counter() - started) * 1000
            continue
        return Routed(plus_upstream_ms(answer, failed_ms), candidate, position > 0)
    assert last_error is not None
    raise last_error


async def complete(
    endpoint: LLMEndpoint, endpoints: Mapping[str, LLMEndpoint], request: LLMRequest
) -> Routed[Completed]:
    return await _first_success(chain(endpoint, endpoints), lambda e: e.complete(request))


async def open_stream(
    endpoint: LLMEndpoint, endpoints: Mapping[str, LLMEndpoint], request: LLMRequest
) -> Routed[Streaming]:
    return await _first_success(chain(endpoint, endpoints), lambda e: e.open_stream(request))
