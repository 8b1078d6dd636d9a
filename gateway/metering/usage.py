"""What one request used, as one event; prices; and the latest events kept in memory.

Storing events durably is the ledger's job (`ledger.py`); `RecentUsage` keeps the latest ones in
memory for `/admin/usage/recent`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class TokenUsage:
    prompt_tokens: int
    completion_tokens: int
    estimated: bool = False  # counted by the gateway because the upstream reported none

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class Price:
    """USD per token, resolved once per config version."""

    input_per_token: float
    output_per_token: float

    def cost(self, usage: TokenUsage) -> float:
        return (
            usage.prompt_tokens * self.input_per_token
            + usage.completion_tokens * self.output_per_token
        )


@dataclass(frozen=True, slots=True)
class UsageEvent:
    request_id: str  # made by the gateway: the ledger's key, which no client can choose
    time: float  # epoch seconds at the request's start
    principal: str
    groups: tuple[str, ...]
    endpoint: str  # the endpoint the client called
    served: str  # served model or deployment that answered ("" when none did)
    route: str  # the route's template (`/serving-endpoints/{name}/invocations`), not the path
    status: int
    latency_ms: float
    overhead_ms: float
    prompt_tokens: int = 0
    completion_tokens: int = 0
    estimated: bool = False
    rows: int = 0  # rows predicted (custom models)
    cost_usd: float = 0.0
    fallback_used: bool = False
    client_request_id: str = ""  # the client's x-request-id, if it sent one (not unique)
    principal_kind: str = "key"  # key | jwt | anonymous: a JWT subject may share a key's id
    served_endpoint: str = ""  # the endpoint that answered: this one, or one of its fallbacks
    served_run_id: str = ""  # the MLflow run of the model version that answered, if known
    model_uuid: str = ""  # the `model_uuid` in the answering model's MLmodel file
    tags: dict[str, str] = field(default_factory=dict)  # the request's tags header (checked)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class RecentUsage:
    """The latest events, in memory (bounded)."""

    def __init__(self, capacity: int = 10_000) -> None:
        self._events: deque[UsageEvent] = deque(maxlen=capacity)

    def record(self, event: UsageEvent) -> None:
        self._events.append(event)

    def latest(self, limit: int) -> list[UsageEvent]:
        if limit <= 0:
            return []
        return list(self._events)[-limit:]
