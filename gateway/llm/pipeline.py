"""One LLM call, whatever route it came by: validate, admit, route (with fallbacks), relay, meter.

Non-streaming answers are relayed as the upstream sent them; streams go through `relay.py`.
Every call that was admitted ends in exactly one settled reservation and one usage event.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import orjson

from gateway.config.schema import Task
from gateway.errors import BadRequest, GatewayError
from gateway.http import (
    ClientDisconnected,
    Request,
    Response,
    StreamingResponse,
    json_object,
    wait_for_disconnect,
)
from gateway.llm import fallbacks
from gateway.llm.demand import worst_case
from gateway.llm.endpoint import LLMEndpoint
from gateway.llm.relay import CLIENT_CLOSED, estimate_usage, relay
from gateway.llm.types import Completed, Lineage, LLMRequest, Streaming
from gateway.metering.meter import Meter
from gateway.state import Caller, GatewayState

SERVED_MODEL = b"x-served-model"
OVERHEAD = b"x-gateway-overhead-ms"
DISCONNECT_WATCH_AFTER_S = 0.05
NO_LINEAGE = Lineage()

Result = TypeVar("Result")


async def model_call(request: Request, caller: Caller) -> tuple[LLMEndpoint, dict[str, Any]]:
    """Which endpoint a body that names its `model` calls, and the body (403 if not allowed)."""
    runtime = caller.runtime
    body = json_object(await request.body(runtime.loaded.config.server.max_body_bytes))
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("'model' is required: the name of the endpoint to call.")
    endpoint = runtime.llm_endpoint(model)
    runtime.keyring.authorize(caller.principal, endpoint.name)
    return endpoint, body


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
    for field, most in (
        ("max_tokens", None),
        ("max_completion_tokens", None),
        ("n", 128),
        ("best_of", 20),
    ):
        limit = body.get(field)
        if limit is not None and (type(limit) is not int or limit < 1):
            raise BadRequest(f"'{field}' must be a positive integer.")
        if limit is not None and most is not None and limit > most:
            raise BadRequest(f"'{field}' must be at most {most}.")
    options = body.get("stream_options")
    wants_usage = isinstance(options, dict) and options.get("include_usage") is True
    _check_forwardable(body)
    return LLMRequest(task=task, body=body, stream=stream, client_wants_usage=wants_usage)


def _check_forwardable(body: dict[str, Any]) -> None:
    """A body the gateway could parse but not send on (orjson writes at most 254 levels of
    nesting, and reads 1,024) is the client's error, found before anything is counted."""
    try:
        orjson.dumps(body)
    except orjson.JSONEncodeError as exc:
        raise BadRequest(f"The request body cannot be forwarded: {exc}.") from exc


async def call_llm_endpoint(
    request: Request,
    state: GatewayState,
    caller: Caller,
    endpoint: LLMEndpoint,
    task: Task,
    body: dict[str, Any],
) -> Response | StreamingResponse:
    runtime = caller.runtime
    llm_request = validate(task, endpoint, body)
    meter = Meter(
        request,
        state.usage,
        runtime.governor,
        caller.principal,
        endpoint.name,
        endpoint.price,
        capture=runtime.capture.get(endpoint.name),
        trace=runtime.tracing.get(endpoint.name),
    )
    default_max_tokens = runtime.loaded.config.limits.default_max_tokens
    try:
        await meter.admit(lambda: worst_case(llm_request, endpoint.price, default_max_tokens))
        candidates = fallbacks.chain(endpoint, runtime.llm_endpoints, caller.principal.may_call)

        async def enter(fallback: LLMEndpoint) -> None:
            await meter.admit_fallback(
                fallback.name, lambda: worst_case(llm_request, fallback.price, default_max_tokens)
            )

        meter.call_started()
        if llm_request.stream:
            routed_stream = await _unless_client_leaves(
                request, fallbacks.open_stream(candidates, llm_request, enter)
            )
        else:
            routed = await _unless_client_leaves(
                request, fallbacks.complete(candidates, llm_request, enter)
            )
            meter.call_ended()
    except BaseException as exc:  # every exit after admission settles and records the call
        await meter.shielded(_end_failed(meter, llm_request, exc))
        raise
    if not llm_request.stream:
        completed = routed.result
        _served(meter, completed, routed.endpoint)
        usage = completed.usage or await estimate_usage(llm_request, completed.body)
        overhead = meter.overhead_ms(completed.upstream_ms)
        # on record before answered
        await meter.finish(200, usage=usage, overhead_ms=overhead)
        return Response(200, completed.body, headers=_headers(meter, overhead, completed))
    streaming = routed_stream.result
    _served(meter, streaming, routed_stream.endpoint)
    overhead = meter.overhead_ms(streaming.upstream_ms)
    return StreamingResponse(
        200,
        relay(streaming, llm_request, meter, overhead),
        headers=_headers(meter, overhead, streaming),
    )


def _served(meter: Meter, answer: Completed | Streaming, endpoint: LLMEndpoint) -> None:
    lineage = answer.lineage or NO_LINEAGE
    meter.served(
        answer.served,
        endpoint=endpoint.name,
        price=endpoint.price,
        run_id=lineage.run_id,
        model_uuid=lineage.model_uuid,
    )


async def _end_failed(meter: Meter, request: LLMRequest, exc: BaseException) -> None:
    """Meter a call that ended without an answer. One the upstream had already received (the
    client left, or the upstream timed out) is billed its prompt: the upstream bills it too."""
    status = failure_status(exc)
    usage = None
    if status in (CLIENT_CLOSED, 504):
        usage = await estimate_usage(request, b"")
    await meter.finish(status, usage=usage)


def failure_status(exc: BaseException) -> int:
    """The status a call that raised `exc` ends with, for its usage row."""
    if isinstance(exc, GatewayError):
        return exc.status
    if isinstance(exc, ClientDisconnected | asyncio.CancelledError):
        return CLIENT_CLOSED
    return 500


def _headers(
    meter: Meter, overhead_ms: float, answer: Completed | Streaming
) -> list[tuple[bytes, bytes]]:
    """x-served-model (`<endpoint>/<deployment>`, `;fallback` when a fallback answered; an
    MLflow model's own name, as on `/invocations`), the reservation's rate-limit headers and
    the gateway's overhead."""
    name, served = meter.served_endpoint, meter.served_label
    # Foundation deployments are labelled `<endpoint>/<index>` already: name it only once.
    bare = answer.lineage is not None or served.startswith(f"{name}/")
    value = served if bare else f"{name}/{served}"
    if meter.fallback_used:
        value += ";fallback"
    return [
        (SERVED_MODEL, value.encode()),
        *meter.reservation.headers(),
        (OVERHEAD, f"{overhead_ms:.3f}".encode()),
    ]


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
