"""What an LLM call is and what a backend gives back (see `gateway/providers/base.py`)."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from gateway.config.schema import Task
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
class Lineage:
    """Of an answer by an MLflow model (`served` is then its `models:/name/<version>` or its
    path): the registry version's run id and the MLmodel file's model_uuid."""

    run_id: str = ""
    model_uuid: str = ""


@dataclass(frozen=True, slots=True)
class Completed:
    body: bytes  # relayed to the client as it came, unless a backend had to translate it
    usage: TokenUsage | None  # None: the upstream reported none
    served: str  # the deployment or model that answered
    upstream_ms: float
    lineage: Lineage | None = None  # None: a deployment of an LLM endpoint answered


@dataclass(slots=True)
class Streaming:
    """An open upstream stream; its events are OpenAI chunk events, [DONE] included."""

    events: AsyncIterator[bytes]
    served: str
    upstream_ms: float  # to the upstream's response headers
    closers: list[Any] = field(default_factory=list)  # aclose()-ables, closed with the stream
    lineage: Lineage | None = None  # as in `Completed`

    async def aclose(self) -> None:
        for closer in self.closers:
            await closer()


Answer = TypeVar("Answer", Completed, Streaming)


def plus_upstream_ms(answer: Answer, ms: float) -> Answer:
    """`answer` with `ms` more upstream time: the failed attempts (and backoff) before it were
    spent waiting on upstreams, which the gateway's overhead figure must not count."""
    return dataclasses.replace(answer, upstream_ms=answer.upstream_ms + ms) if ms else answer
