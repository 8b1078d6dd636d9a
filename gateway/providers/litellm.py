"""Providers whose wire format is not OpenAI's (Anthropic, Bedrock, Gemini/Vertex, Cohere, ...),
called through the litellm SDK, which translates to and from OpenAI's format.

This is the only module that imports litellm, and only when such an endpoint is configured.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson

from gateway.config.schema import ExternalEndpointConfig
from gateway.errors import (
    GatewayError,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
)
from gateway.llm.types import DONE_EVENT, Completed, LLMRequest, Streaming
from gateway.providers.openai_compat import usage_from

# Request fields the gateway handles itself.
_OWN_FIELDS = frozenset({"model", "stream", "stream_options"})


def import_litellm() -> Any:
    """Import litellm (blocking, ~5 s the first time: call it from a thread)."""
    # Never fetch the price map at run time: litellm's bundled copy is used.
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    os.environ.setdefault("LITELLM_LOG", "WARNING")
    import litellm  # noqa: TID251 - this module is litellm's one home

    litellm.telemetry = False
    litellm.suppress_debug_info = True
    logging.getLogger("LiteLLM").setLevel(logging.WARNING)
    return litellm


class LiteLLMBackend:
    """Imports litellm in the background after start-up (see `warm_up`), so the gateway is ready
    at once; a call that comes before the import has finished waits for it."""

    def __init__(self, config: ExternalEndpointConfig) -> None:
        self._litellm: Any = sys.modules.get("litellm")
        self._model = f"{config.provider}/{config.model}"
        self.label = f"{config.provider}/{config.model}"
        self._settings: dict[str, Any] = {**config.options, "num_retries": 0}
        if config.api_key is not None:
            self._settings["api_key"] = config.api_key.get_secret_value()
        if config.api_base:
            self._settings["api_base"] = config.api_base
        if config.api_version:
            self._settings["api_version"] = config.api_version

    async def warm_up(self) -> None:
        if self._litellm is None:
            self._litellm = await asyncio.to_thread(import_litellm)

    def _arguments(self, request: LLMRequest, timeout_s: float) -> dict[str, Any]:
        arguments = {k: v for k, v in request.body.items() if k not in _OWN_FIELDS}
        return {**arguments, **self._settings, "model": self._model, "timeout": timeout_s}

    async def complete(self, request: LLMRequest, timeout_s: float) -> Completed:
        started = time.perf_counter()
        await self.warm_up()
        arguments = self._arguments(request, timeout_s)
        call = {
            "chat": self._litellm.acompletion,
            "completions": self._litellm.atext_completion,
            "embeddings": self._litellm.aembedding,
        }[request.task]
        try:
            response = await call(**arguments)
        except Exception as exc:
            raise self._translate(exc) from exc
        document = response.model_dump(exclude_none=False)
        return Completed(
            orjson.dumps(document, default=str),
            usage_from(document.get("usage")),
            self.label,
            (time.perf_counter() - started) * 1000,
        )

    async def open_stream(self, request: LLMRequest, timeout_s: float) -> Streaming:
        if request.task == "embeddings":
            raise UpstreamRejected("Embeddings cannot be streamed.", status=400)
        started = time.perf_counter()
        await self.warm_up()
        arguments = {**self._arguments(request, timeout_s), "stream": True}
        arguments["stream_options"] = {"include_usage": True}
        call = (
            self._litellm.acompletion if request.task == "chat" else self._litellm.atext_completion
        )
        try:
            chunks = await call(**arguments)
        except Exception as exc:
            raise self._translate(exc) from exc

        async def events() -> AsyncIterator[bytes]:
            try:
                async for chunk in chunks:
                    yield (
                        b"data: "
                        + orjson.dumps(chunk.model_dump(exclude_none=True), default=str)
                        + b"\n\n"
                    )
            except Exception as exc:
                raise self._translate(exc) from exc
            yield DONE_EVENT

        async def close() -> None:
            closer = getattr(chunks, "aclose", None)
            if closer is not None:
                await closer()

        return Streaming(events(), self.label, (time.perf_counter() - started) * 1000, [close])

    def _translate(self, exc: Exception) -> GatewayError:
        """litellm's exception classes → the gateway's; by class and status, never by text."""
        errors = self._litellm.exceptions
        if isinstance(exc, GatewayError):
            return exc
        if isinstance(exc, errors.MidStreamFallbackError) and isinstance(
            exc.original_exception, Exception
        ):
            # What broke a stream comes wrapped, with the wrapper's status (a stall is a 408).
            exc = exc.original_exception
        message = f"Upstream {self.label}: {getattr(exc, 'message', None) or exc}"
        if isinstance(exc, errors.Timeout):
            return UpstreamTimeout(message)
        if isinstance(exc, errors.RateLimitError):
            return UpstreamRateLimited(message)
        status = getattr(exc, "status_code", None)
        if (
            isinstance(exc, errors.APIConnectionError)
            or not isinstance(status, int)
            or status >= 500
        ):
            return UpstreamError(message)
        return UpstreamRejected(message, status=status)

    def describe(self) -> dict[str, object]:
        return {"provider": "litellm", "ready": self._litellm is not None}

    async def aclose(self) -> None:
        """litellm owns its HTTP clients."""
