"""Relaying an upstream stream to the client, and counting what a call used when the upstream
did not say.

Events are relayed one by one as they arrive; the usage the gateway asked the upstream for is
read on the way and, if the client did not ask for it, its chunk is left out. The call is metered
when the stream ends, however it ends (finished, failed, or the client left), and its usage is on
record before the final `data: [DONE]` is sent.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson

from gateway.errors import GatewayError
from gateway.llm.sse import event_data
from gateway.llm.types import LLMRequest, Streaming
from gateway.metering.meter import Meter
from gateway.metering.tokens import count_tokens, message_texts
from gateway.metering.usage import TokenUsage
from gateway.providers.openai_compat import usage_from

CLIENT_CLOSED = 499  # nginx's convention for "the client went away"


async def relay(
    streaming: Streaming, request: LLMRequest, meter: Meter, overhead_ms: float
) -> AsyncIterator[bytes]:
    """The upstream's events, as they come, less the usage chunk the client did not ask for."""
    usage: TokenUsage | None = None
    texts: list[str] = []
    status = CLIENT_CLOSED  # until the stream ends one way or another
    done: bytes | None = None
    try:
        async for event in streaming.events:
            data = event_data(event)
            if data == b"[DONE]":
                done = event  # sent once the call's usage is durable: see below
                continue
            if data is None:
                yield event
                continue
            try:
                chunk = orjson.loads(data)
            except orjson.JSONDecodeError:
                yield event
                continue
            if isinstance(chunk, dict):
                found = usage_from(chunk.get("usage"))
                if found is not None:
                    usage = found
                    if not chunk.get("choices") and not request.client_wants_usage:
                        continue
                texts += _chunk_texts(chunk)
            yield event
        status = 200
    except GatewayError as error:  # after the first byte: the app ends the stream with it
        status = error.status
        raise
    finally:
        # A client that leaves cancels this generator at any await, this block's included;
        # shielded, the stream is still closed (its slot released) and the call metered.
        await meter.shielded(
            _end_stream(streaming, request, meter, status, usage, texts, overhead_ms)
        )
    if done is not None:
        yield done  # the client's sign of a complete answer: its usage is on disk already


async def _end_stream(
    streaming: Streaming,
    request: LLMRequest,
    meter: Meter,
    status: int,
    usage: TokenUsage | None,
    texts: list[str],
    overhead_ms: float,
) -> None:
    meter.call_ended()
    try:
        await streaming.aclose()
    finally:
        if usage is None:
            usage = await _estimate(request, texts)
        await meter.finish(status, usage=usage, overhead_ms=overhead_ms)


def _chunk_texts(chunk: dict[str, Any]) -> list[str]:
    texts = []
    for choice in chunk.get("choices") or ():
        if isinstance(choice, dict):
            delta = choice.get("delta")
            text = delta.get("content") if isinstance(delta, dict) else choice.get("text")
            if isinstance(text, str):
                texts.append(text)
    return texts


async def estimate_usage(request: LLMRequest, body: bytes) -> TokenUsage:
    """Usage counted by the gateway, for upstreams that report none."""
    texts: list[str] = []
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        document = {}
    for choice in document.get("choices") or () if isinstance(document, dict) else ():
        if isinstance(choice, dict):
            message = choice.get("message")
            text = message.get("content") if isinstance(message, dict) else choice.get("text")
            if isinstance(text, str):
                texts.append(text)
    return await _estimate(request, texts)


def prompt_texts(request: LLMRequest) -> list[str]:
    """The text a call sends: its messages, prompt or embedding input."""
    body = request.body
    if request.task == "chat":
        return message_texts(body.get("messages"))
    field = body.get("prompt" if request.task == "completions" else "input")
    return [field] if isinstance(field, str) else [t for t in field or () if isinstance(t, str)]


async def _estimate(request: LLMRequest, completion_texts: list[str]) -> TokenUsage:
    prompt = prompt_texts(request)
    prompt_tokens, completion_tokens = await asyncio.to_thread(
        lambda: (count_tokens(prompt), count_tokens(completion_texts))
    )
    return TokenUsage(prompt_tokens, completion_tokens, estimated=True)
