"""What every LLM backend takes and gives back, whatever wire format it speaks upstream.

A backend makes ONE attempt per call (retries and fallbacks are layered above it, in
`gateway/llm_routing.py`), and always answers in OpenAI's wire format: a JSON body for
non-streaming calls, complete SSE events (`data: {...}\\n\\n`) for streaming ones.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from gateway.config import Task
from gateway.metering.usage import TokenUsage

DONE_EVENT = b"data: [DONE]\n\n"


@dataclass(frozen=True, slots=True)
class LLMRequest:
    """A client's call, parsed once. `body` is the client's JSON; backends copy before changing."""

    task: Task
    body: dict[str, Any]
    stream: bool
    client_wants_usage: bool  # the client itself set stream_options.include_usage


@dataclass(frozen=True, slots=True)
class Completed:
    body: bytes  # relayed to the client as it came, unless a backend had to translate it
    usage: TokenUsage | None  # None: the upstream reported none
    served: str  # the deployment or model that answered
    upstream_ms: float


@dataclass(slots=True)
class Streaming:
    """An open upstream stream; its events are OpenAI chunk events, [DONE] included."""

    events: AsyncIterator[bytes]
    served: str
    upstream_ms: float  # to the upstream's response headers
    closers: list[Any] = field(default_factory=list)  # aclose()-ables, closed with the stream

    async def aclose(self) -> None:
        for closer in self.closers:
            await closer()


Answer = TypeVar("Answer", Completed, Streaming)


def plus_upstream_ms(answer: Answer, ms: float) -> Answer:
    """`answer` with `ms` more upstream time: the failed attempts (and backoff) before it were
    spent waiting on upstreams, which the gateway's overhead figure must not count."""
    return dataclasses.replace(answer, upstream_ms=answer.upstream_ms + ms) if ms else answer


class LLMBackend(Protocol):
    async def complete(self, request: LLMRequest, timeout_s: float) -> Completed: ...

    async def open_stream(self, request: LLMRequest, timeout_s: float) -> Streaming: ...

    async def aclose(self) -> None: ...
