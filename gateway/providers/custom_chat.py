"""A custom endpoint serving an MLflow ChatModel, reachable through `/v1/chat/completions`.

Its answers name the model version that gave them (`Lineage`), as `/invocations` does."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import orjson

from gateway.errors import BadRequest
from gateway.llm.types import DONE_EVENT, Completed, Lineage, LLMRequest, Streaming
from gateway.models import scoring
from gateway.models.served import CustomEndpoint
from gateway.providers.openai_compat import usage_from_body

# Fields of an OpenAI request that are the gateway's business, not the model's.
_GATEWAY_FIELDS = frozenset({"model", "stream", "stream_options", "user"})


class CustomChatBackend:
    def __init__(self, endpoint: CustomEndpoint) -> None:
        self._endpoint = endpoint

    async def complete(self, request: LLMRequest, timeout_s: float) -> Completed:
        if request.task != "chat":
            raise BadRequest(f"Endpoint {self._endpoint.name!r} is a chat model.")
        served = self._endpoint.pick()
        started = time.perf_counter()
        document = {k: v for k, v in request.body.items() if k not in _GATEWAY_FIELDS}
        body = orjson.dumps(document)
        result = await served.score(
            scoring.ScoringRequest(scoring.CONTENT_TYPE_JSON, body, document)
        )
        return Completed(
            result,
            usage_from_body(result, served.label),
            served.label,
            (time.perf_counter() - started) * 1000,
            lineage=Lineage(served.run_id, served.model_uuid),
        )

    async def open_stream(self, request: LLMRequest, timeout_s: float) -> Streaming:
        """The whole answer as one chunk: ChatModels answer at once through this path."""
        completed = await self.complete(request, timeout_s)
        chunks = _as_chunks(orjson.loads(completed.body))

        async def events() -> AsyncIterator[bytes]:
            for chunk in chunks:
                yield b"data: " + orjson.dumps(chunk) + b"\n\n"
            yield DONE_EVENT

        return Streaming(
            events(), completed.served, completed.upstream_ms, lineage=completed.lineage
        )

    async def warm_up(self) -> None:
        """The models were warmed on their input example when they loaded."""

    def describe(self) -> dict[str, object]:
        return {"served_models": self._endpoint.describe()}

    async def aclose(self) -> None:
        """The models belong to the custom endpoint."""


def _as_chunks(completion: dict[str, Any]) -> list[dict[str, Any]]:
    common = {
        "id": completion.get("id") or "chatcmpl-custom",
        "object": "chat.completion.chunk",
        "created": completion.get("created") or int(time.time()),
        "model": completion.get("model") or "",
    }
    choices = completion.get("choices") or []
    chunks: list[dict[str, Any]] = [
        {
            **common,
            "choices": [
                {
                    "index": choice.get("index", 0),
                    "delta": {
                        k: v for k, v in (choice.get("message") or {}).items() if v is not None
                    },
                    "finish_reason": choice.get("finish_reason"),
                }
                for choice in choices
            ],
        }
    ]
    if completion.get("usage"):
        chunks.append({**common, "choices": [], "usage": completion["usage"]})
    return chunks
