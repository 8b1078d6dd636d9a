"""One LLM call, whatever route it came by: validate, route (with fallbacks), relay, meter.

Non-streaming answers are relayed as the upstream sent them. Streams are relayed event by event
as they arrive; the usage the gateway asked the upstream for is read on the way and, if the client
did not ask for it, its chunk is left out. Every call ends in exactly one usage event.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Coroutine
from typing import Any, TypeVar

import orjson

from gateway import llm_routing
from gateway.auth import Principal
from gateway.backends.llm import LLMRequest, Streaming
from gateway.backends.openai_compat import usage_from
from gateway.config import Task
from gateway.errors import BadRequest, GatewayError, render_openai
from gateway.governance import UNLIMITED
from gateway.http import (
    ClientDisconnected,
    Request,
    Response,
    StreamingResponse,
    wait_for_disconnect,
)
from gateway.llm_endpoint import LLMEndpoint
from gateway.metering.tokens import count_tokens, message_texts
from gateway.metering.usage import TokenUsage, UsageEvent
from gateway.runtime import Runtime
from gateway.sse import event_data
from gateway.state import GatewayState

SERVED_MODEL = b"x-served-model"
OVERHEAD = b"x-gateway-overhead-ms"
CLIENT_CLOSED = 499  # nginx's convention for "the client went away"
DISCONNECT_WATCH_AFTER_S = 0.05

Result = TypeVar("Result")


def parse_json_object(body: bytes) -> dict[str, Any]:
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"The request body is not valid JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise BadRequest("The request body must be a JSON object.")
    return document


async def model_call(
    request: Request, state: GatewayState
) -> tuple[Runtime, Principal, LLMEndpoint, dict[str, Any]]:
    """Who calls which endpoint with what body, for routes whose body names the `model`."""
    runtime, principal = await state.caller(request)
    body = parse_json_object(await request.body(runtime.loaded.config.server.max_body_bytes))
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("'model' is required: the name of the endpoint to call.")
    endpoint = runtime.llm_endpoint(model)
    runtime.keyring.authorize(principal, endpoint.name)
    return runtime, principal, endpoint, body


def validate(task: Task, endpoint: LLMEndpoint, body: dict[str, Any]) -> LLMRequest:
    if endpoint.task != task:
        raise BadRequest(
            f"Endpoint {endpoint.name!r} serves {endpoint.task}, not {task}: call its own route."
        )
    required = {"chat": "messages", "completions": "prompt", "embeddings": "input"}[task]
    value = body.get(required)
    if value is None or (isinstance(value, (list, str)) and not value and task == "chat"):
        raise BadRequest(f"'{required}' is required.")
    if task == "chat" and not (
        isinstance(value, list) and all(isinstance(m, dict) and "role" in m for m in value)
    ):
        raise BadRequest("'messages' must be a list of objects with a 'role'.")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest("'stream' must be true or false.")
    if stream and task == "embeddings":
        raise BadRequest("Embeddings cannot be streamed.")
    for field in ("max_tokens", "max_completion_tokens"):
        limit = body.get(field)
        if limit is not None and (type(limit) is not int or limit < 1):
            raise BadRequest(f"'{field}' must be a positive integer.")
    options = body.get("stream_options")
    wants_usage = isinstance(options, dict) and options.get("include_usage") is True
    return LLMRequest(task=task, body=body, stream=stream, client_wants_usage=wants_usage)


async def call_llm_endpoint(
    request: Request,
    state: GatewayState,
    runtime: Runtime,
    principal: Principal,
    endpoint: LLMEndpoint,
    task: Task,
    body: dict[str, Any],
) -> Response | StreamingResponse:
    llm_request = validate(task, endpoint, body)
    meter = Meter(request, state, runtime, principal, endpoint)
    default_max_tokens = runtime.loaded.config.limits.default_max_tokens
    try:
        meter.reservation = await runtime.governor.admit(
            principal, endpoint.name, lambda: worst_case(llm_request, endpoint, default_max_tokens)
        )
        if llm_request.stream:
            routed_stream = await _unless_client_leaves(
                request, llm_routing.open_stream(endpoint, runtime.llm_endpoints, llm_request)
            )
        else:
            routed = await _unless_client_leaves(
                request, llm_routing.complete(endpoint, runtime.llm_endpoints, llm_request)
            )
    except GatewayError as error:
        await meter.finish(error.status, None, overhead_ms=0.0)
        raise
    except ClientDisconnected:
        await meter.finish(CLIENT_CLOSED, None, overhead_ms=0.0)
        raise
    if not llm_request.stream:
        completed = routed.result
        meter.served(routed.endpoint, completed.served, routed.fallback_used)
        usage = completed.usage or await estimate_usage(llm_request, completed.body)
        overhead = meter.overhead_ms(completed.upstream_ms)
        await meter.finish(200, usage, overhead_ms=overhead)  # durable before acknowledged
        return Response(200, completed.body, headers=[*meter.headers(), _overhead_header(overhead)])
    streaming = routed_stream.result
    meter.served(routed_stream.endpoint, streaming.served, routed_stream.fallback_used)
    overhead = meter.overhead_ms(streaming.upstream_ms)
    return StreamingResponse(
        200,
        relay(streaming, llm_request, meter, overhead),
        headers=[*meter.headers(), _overhead_header(overhead)],
    )


def worst_case(
    request: LLMRequest, endpoint: LLMEndpoint, default_max_tokens: int
) -> tuple[int, float]:
    """What a call may use at most, reserved against token limits and budgets before it runs:
    its prompt (counted roughly, 4 characters a token, rounded up) plus its `max_tokens`."""
    body = request.body
    if request.task == "chat":
        texts = message_texts(body.get("messages"))
    else:
        field = body.get("prompt" if request.task == "completions" else "input")
        texts = (
            [field] if isinstance(field, str) else [t for t in field or () if isinstance(t, str)]
        )
    prompt = sum(len(text) + 3 for text in texts) // 4 + 1
    if request.task == "embeddings":
        completion = 0
    else:
        completion = (
            body.get("max_completion_tokens") or body.get("max_tokens") or default_max_tokens
        )
    price = endpoint.price
    cost = price.cost(TokenUsage(prompt, completion)) if price is not None else 0.0
    return prompt + completion, cost


def _overhead_header(overhead_ms: float) -> tuple[bytes, bytes]:
    return (OVERHEAD, f"{overhead_ms:.3f}".encode())


async def _unless_client_leaves(request: Request, call: Coroutine[Any, Any, Result]) -> Result:
    """`call`'s result; if the client disconnects first, `call` is cancelled and
    ClientDisconnected raised: nobody would read the answer, and an upstream call holds its
    deployment (and any provisioned slot) until it ends, minutes for a slow model.

    Watching costs a task per call, so it only starts once the call has run for a while: a
    fast call never pays for it, and a client leaving a slow one is noticed within that time.
    """
    this_task = asyncio.current_task()
    assert this_task is not None
    watcher: asyncio.Task[None] | None = None
    client_left = False

    async def cancel_when_client_leaves() -> None:
        nonlocal client_left
        await wait_for_disconnect(request.receive)
        client_left = True
        this_task.cancel()

    def start_watching() -> None:
        nonlocal watcher
        watcher = asyncio.ensure_future(cancel_when_client_leaves())

    timer = asyncio.get_running_loop().call_later(DISCONNECT_WATCH_AFTER_S, start_watching)
    try:
        return await call
    except asyncio.CancelledError:
        if client_left:
            this_task.uncancel()
            raise ClientDisconnected from None
        raise
    finally:
        timer.cancel()
        if watcher is not None:
            watcher.cancel()


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
    except GatewayError as error:  # after the first byte: end the stream with an error event
        status = error.status
        yield b"data: " + render_openai(error) + b"\n\n"
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
    try:
        await streaming.aclose()
    finally:
        if usage is None:
            usage = await _estimate(request, texts)
        await meter.finish(status, usage, overhead_ms=overhead_ms)


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


class Meter:
    """Times one call and turns it into its usage event."""

    __slots__ = (
        "_endpoint",
        "_fallback",
        "_principal",
        "_request",
        "_runtime",
        "_served",
        "_state",
        "_wall",
        "reservation",
    )

    def __init__(
        self,
        request: Request,
        state: GatewayState,
        runtime: Runtime,
        principal: Principal,
        endpoint: LLMEndpoint,
    ) -> None:
        self._request = request
        self._state = state
        self._runtime = runtime
        self.reservation = UNLIMITED
        self._principal = principal
        self._endpoint = endpoint
        self._served = ""
        self._fallback = False
        self._wall = time.time() - (time.perf_counter() - request.started)

    def served(self, endpoint: LLMEndpoint, served: str, fallback_used: bool) -> None:
        self._endpoint = endpoint
        self._served = served
        self._fallback = fallback_used

    def headers(self) -> list[tuple[bytes, bytes]]:
        name, served = self._endpoint.name, self._served
        # Foundation deployments are labelled `<endpoint>/<index>` already: name it only once.
        value = served if served.startswith(f"{name}/") else f"{name}/{served}"
        if self._fallback:
            value += ";fallback"
        return [(SERVED_MODEL, value.encode()), *self.reservation.headers()]

    async def shielded(self, ending: Coroutine[Any, Any, None]) -> None:
        """Run `ending` to completion even if the caller is cancelled meanwhile."""
        task = asyncio.ensure_future(ending)
        self._state.background.add(task)  # the loop keeps only a weak reference
        task.add_done_callback(self._state.background.discard)
        await asyncio.shield(task)

    def overhead_ms(self, upstream_ms: float) -> float:
        return max(0.0, (time.perf_counter() - self._request.started) * 1000 - upstream_ms)

    async def finish(self, status: int, usage: TokenUsage | None, *, overhead_ms: float) -> None:
        latency_ms = (time.perf_counter() - self._request.started) * 1000
        price = self._endpoint.price
        cost = price.cost(usage) if price and usage else 0.0
        await self._runtime.governor.settle(
            self.reservation, tokens=usage.total_tokens if usage else 0, cost_usd=cost
        )
        await self._state.usage.record(
            UsageEvent(
                request_id=self._request.request_id,
                time=self._wall,
                principal=self._principal.id,
                groups=self._principal.groups,
                endpoint=self._endpoint.name,
                served=self._served,
                route=self._request.scope["path"],
                status=status,
                latency_ms=latency_ms,
                overhead_ms=overhead_ms,
                prompt_tokens=usage.prompt_tokens if usage else 0,
                completion_tokens=usage.completion_tokens if usage else 0,
                estimated=usage.estimated if usage else False,
                cost_usd=cost,
                fallback_used=self._fallback,
            ),
            self._principal,
        )
