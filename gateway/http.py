"""The few HTTP pieces the pure-ASGI hot path needs: a request view and a buffered response."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from gateway.errors import BadRequest, GatewayError, PayloadTooLarge

Headers = list[tuple[bytes, bytes]]
JSON = b"application/json"


class Request:
    """A view of one ASGI HTTP request; headers are indexed on first use."""

    __slots__ = (
        "_headers",
        "client_request_id",
        "config_version",
        "path_params",
        "raw_body",
        "receive",
        "request_id",
        "route",
        "scope",
        "started",
        "tags",
        "tap",
    )

    def __init__(
        self,
        scope: dict[str, Any],
        receive: Any,
        path_params: dict[str, str],
        route: str = "",
    ) -> None:
        self.scope = scope
        self.receive = receive
        self.path_params = path_params
        self.route = route  # the matched route's template: what labels and the ledger record
        self.request_id = ""  # set by the app: the gateway's own id, the ledger's key
        self.client_request_id = ""  # the client's x-request-id, checked by the app
        self.config_version = ""  # set when the request takes its runtime snapshot
        self.tags: dict[str, str] = {}  # the client's request tags, checked by the app
        self.started = time.perf_counter()  # for latency and gateway-overhead figures
        self.raw_body = b""  # the body as the client sent it, once read (inference tables)
        self.tap: ResponseTap | None = None  # set when the response is to be seen as sent
        self._headers: dict[bytes, bytes] | None = None

    def header(self, name: bytes) -> bytes | None:
        """A header by lower-case name (ASGI servers lower-case them)."""
        if self._headers is None:
            # Of repeated headers the first wins, as in MLflow's server (Starlette).
            self._headers = dict(reversed(self.scope["headers"]))
        return self._headers.get(name)

    async def body(self, limit: int) -> bytes:
        """The whole body, or a 413 as soon as it is known to exceed `limit` bytes."""
        declared = self.header(b"content-length")
        if declared is not None:
            try:
                if int(declared) > limit:
                    raise PayloadTooLarge(f"Request body exceeds the limit of {limit} bytes.")
            except ValueError as exc:
                raise BadRequest("Invalid Content-Length header.") from exc
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnected
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(f"Request body exceeds the limit of {limit} bytes.")
                chunks.append(chunk)
            if not message.get("more_body", False):
                self.raw_body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                return self.raw_body


def json_object(body: bytes) -> dict[str, Any]:
    """A body that must be a JSON object, or a 400 saying why it is not."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"The request body is not valid JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise BadRequest("The request body must be a JSON object.")
    return document


MAX_CLIENT_REQUEST_ID = 128


def client_request_id(value: bytes, what: str = "x-request-id") -> str:
    """The client's own request id (`x-request-id`, or Databricks' `client_request_id` field),
    stored beside the ledger's key."""
    if not 0 < len(value) <= MAX_CLIENT_REQUEST_ID or not value.isascii():
        raise BadRequest(f"{what} must be 1 to {MAX_CLIENT_REQUEST_ID} ASCII characters.")
    text = value.decode("ascii")
    if not text.isprintable():
        raise BadRequest(f"{what} must not contain control characters.")
    return text


class ResponseTap(Protocol):
    """What sees a response as the client is sent it (an inference table's sampled row): each
    body chunk as it goes out, then `sent` once the response has ended, however it ended."""

    def chunk(self, body: bytes) -> None: ...

    def sent(self) -> None: ...


Send = Callable[[dict[str, Any]], Awaitable[None]]


def tapped(send: Send, tap: ResponseTap) -> Send:
    """`send`, also handing every body chunk to `tap` (headers are never shown to it)."""

    async def send_and_tap(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            tap.chunk(message.get("body", b""))
        await send(message)

    return send_and_tap


class ClientDisconnected(Exception):
    """The client went away before its request was read; nothing is sent back."""


@dataclass(slots=True)
class Response:
    status: int
    body: bytes
    content_type: bytes = JSON
    headers: Headers = field(default_factory=list)

    async def send(self, send: Any, extra_headers: Headers) -> None:
        headers = [
            (b"content-type", self.content_type),
            (b"content-length", str(len(self.body)).encode()),
            *self.headers,
            *extra_headers,
        ]
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": self.body})


class StreamingResponse:
    """Sends `chunks` as they come; if the client disconnects, the chunk source is cancelled
    (its `finally` blocks run, so an upstream stream is closed and its slot released).

    A `GatewayError` raised by the source after the headers are sent cannot change the status:
    `error_event` (set by the app, in the route's protocol) renders it as the stream's last event.
    """

    def __init__(
        self,
        status: int,
        chunks: AsyncIterator[bytes],
        *,
        content_type: bytes = b"text/event-stream",
        headers: Headers | None = None,
    ) -> None:
        self.status = status
        self.chunks = chunks
        self.content_type = content_type
        self.headers = headers or []
        self.error_event: Callable[[GatewayError], bytes] | None = None

    async def send(self, send: Any, extra_headers: Headers, receive: Any) -> None:
        headers = [
            (b"content-type", self.content_type),
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),
            *self.headers,
            *extra_headers,
        ]
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        pump = asyncio.ensure_future(self._pump(send))
        watch = asyncio.ensure_future(wait_for_disconnect(receive))
        try:
            await asyncio.wait((pump, watch), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (pump, watch):
                if not task.done():
                    task.cancel()
            await asyncio.gather(pump, watch, return_exceptions=True)
            closer = getattr(self.chunks, "aclose", None)
            if closer is not None:
                await closer()
        if pump.done() and not pump.cancelled() and pump.exception() is not None:
            raise pump.exception()  # type: ignore[misc]

    async def _pump(self, send: Any) -> None:
        try:
            async for chunk in self.chunks:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except GatewayError as error:
            if self.error_event is None:
                raise
            event = self.error_event(error)
            await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def wait_for_disconnect(receive: Any) -> None:
    """Returns when the client disconnects (call it once the request body has been read)."""
    while (await receive())["type"] != "http.disconnect":
        pass
