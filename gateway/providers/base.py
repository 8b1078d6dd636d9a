"""The interface every LLM backend implements, whatever wire format it speaks upstream.

A backend makes ONE attempt per call (retries are layered above it in `gateway/llm/endpoint.py`,
fallbacks in `gateway/llm/fallbacks.py`) and always answers in OpenAI's wire format: a JSON body
for non-streaming calls, complete SSE events (`data: {...}\\n\\n`) for streaming ones.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from gateway.llm.types import Completed, LLMRequest, Streaming

if TYPE_CHECKING:
    from gateway.config.schema import ExternalEndpointConfig
    from gateway.providers.http_pool import SessionPool


class LLMBackend(Protocol):
    async def complete(self, request: LLMRequest, timeout_s: float) -> Completed: ...

    async def open_stream(self, request: LLMRequest, timeout_s: float) -> Streaming: ...

    async def warm_up(self) -> None:
        """Slow preparation that must not delay readiness (run in the background at start)."""
        ...

    def describe(self) -> dict[str, object]:
        """What `/ready` and `/admin/config` show of this backend (its deployments' health)."""
        ...

    async def aclose(self) -> None: ...


# Builds the backend of an `external` endpoint; raises ValueError for a config it cannot serve.
ProviderFactory = Callable[["ExternalEndpointConfig", "SessionPool"], LLMBackend]
