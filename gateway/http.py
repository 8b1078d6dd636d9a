"""The few HTTP pieces the pure-ASGI hot path needs: a request view and a buffered response."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gateway.errors import BadRequest, PayloadTooLarge

Headers = list[tuple[bytes, bytes]]
JSON = b"application/json"


class Request:
    """A view of one ASGI HTTP request; headers are indexed on first use."""

    __slots__ = ("_headers", "path_params", "receive", "scope")

    def __init__(self, scope: dict[str, Any], receive: Any, path_params: dict[str, str]) -> None:
        self.scope = scope
        self.receive = receive
        self.path_params = path_params
        self._headers: dict[bytes, bytes] | None = None

    def header(self, name: bytes) -> bytes | None:
        """A header by lower-case name (ASGI servers lower-case them)."""
        if self._headers is None:
            self._headers = dict(self.scope["headers"])
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
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)


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
