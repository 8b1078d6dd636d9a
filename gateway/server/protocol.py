"""uvicorn's httptools protocol with limits on what a client may hold before its request starts.

httptools grows a header value by concatenating each piece it reads (quadratic time), uvicorn does
the same with the URL, and neither caps the head or times it out: one connection streaming a 64 MiB
header stalls the event loop for seconds, and connections that never finish their head (or never
send a byte) stay open forever. `GatewayHttpProtocol` adds, per connection:

- a cap on the request head: past `max_header_bytes` (request line and headers) the answer is 431
  (414 for the URL alone), past `max_headers` header lines 431, both before the app is called;
- a head deadline: a connection must complete each request head within `header_timeout_s` of
  connecting or of sending its first byte after the previous response (408 when part of a head
  arrived, a plain close otherwise); idle keep-alive connections keep uvicorn's own timeout;
- a cap of `max_connections` per process: a new connection beyond it first displaces the oldest
  connection that is waiting for a request head (idle or slow; nginx reuses idle keep-alive
  connections the same way), and only when every connection has a request in flight gets a fast
  503 without being parsed.

An error answer is followed by a lingering close (stop sending, discard what still arrives for a
moment) so that a client still writing reads the status instead of a connection reset.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import httptools
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

logger = logging.getLogger("gateway.server")

LINGER_S = 1.0  # how long an answered, refused connection may keep sending before it is closed
LINGER_MAX_BYTES = 1024 * 1024  # ...and how much of it is read and thrown away
REASONS = {
    408: b"request head not received in time",
    414: b"request URL too long",
    431: b"request header fields too large",
    503: b"too many connections",
}


@dataclass(frozen=True, slots=True)
class HeadLimits:
    max_header_bytes: int
    max_headers: int
    header_timeout_s: float
    max_connections: int


class _HeadRefused(Exception):
    """Raised from a parser callback to stop httptools at once; the status is on the protocol."""


class WaitingConnections:
    """One process's connections that are waiting for a request head, oldest first.

    They are the ones a new connection displaces at the cap: none of them has a request in flight.
    """

    def __init__(self) -> None:
        self._order: dict[GatewayHttpProtocol, None] = {}  # insertion order = waiting since

    def add(self, connection: GatewayHttpProtocol) -> None:
        self._order.pop(connection, None)
        self._order[connection] = None

    def discard(self, connection: GatewayHttpProtocol) -> None:
        self._order.pop(connection, None)

    def evict_oldest(self) -> bool:
        for oldest in self._order:
            self.discard(oldest)
            oldest.displace()
            return True
        return False

    def __len__(self) -> int:
        return len(self._order)

    def __getstate__(self) -> dict[str, Any]:
        return {}  # each worker process starts with its own empty registry

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._order = {}


class GatewayHttpProtocol(HttpToolsProtocol):
    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        limits: HeadLimits,
        waiting: WaitingConnections,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits = limits
        self._waiting = waiting
        self._awaiting_head = False  # from connecting / the last response until a head completes
        self._head_bytes = 0  # bytes received while awaiting the head (an upper bound)
        self._head_exact = 0  # request line and header lines httptools has handed over
        self._header_count = 0
        self._in_message = False  # from a request's first byte until its body's last
        self._head_timer: asyncio.TimerHandle | None = None
        self._refusal: int | None = None
        self._lingering = False
        self._lingered = 0
        self._linger_timer: asyncio.TimerHandle | None = None

    # --- the connection ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.limits.max_connections and not (
            self._waiting.evict_oldest()
        ):
            self.transport = transport
            logger.debug("refused a connection: %d connections open", len(self.connections))
            self._answer_and_linger(503)
            return
        super().connection_made(transport)
        self._await_head()
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_awaiting_head()
        if self._linger_timer is not None:
            self._linger_timer.cancel()
            self._linger_timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            self._lingered += len(data)
            if self._lingered > LINGER_MAX_BYTES:
                self.transport.close()
            return
        self._unset_keepalive_if_required()
        if self._awaiting_head:
            self._head_bytes += len(data)
            if self._head_timer is None:  # the first byte after a response starts the clock
                self._arm_head_timer()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self._refusal is not None:
                self._refuse(self._refusal)
                return
            msg = "Invalid HTTP request received."
            self.logger.warning(msg)
            self.send_400_response(msg)
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        # httptools holds a header that is still arriving to itself; this bounds it
        if self._awaiting_head and self._head_bytes > self.limits.max_header_bytes:
            self._refuse(431)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # Idle until the next byte (uvicorn's keep-alive timeout runs meanwhile), unless the body
        # of the request just answered is still arriving: those bytes are not a head.
        if self.timeout_keep_alive_task is not None and not self._in_message:
            self._await_head()

    def displace(self) -> None:
        """Close this connection to make room for a new one (it has no request in flight)."""
        self.connections.discard(self)
        if self._head_bytes:
            self._refuse(503)
        else:
            self.transport.close()

    # --- parser callbacks -------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_message = True
        self._head_exact = 0
        self._header_count = 0
        if not self._awaiting_head:  # a pipelined request, begun before the last response ended
            self._awaiting_head = True
            self._head_bytes = 0
        if self._head_timer is None:
            self._arm_head_timer()

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        if len(self.url) > self.limits.max_header_bytes:
            self._refusal = 414
            raise _HeadRefused

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        self._head_exact += len(name) + len(value) + 4  # ": " and CRLF
        if (
            self._header_count > self.limits.max_headers
            or len(self.url) + self._head_exact > self.limits.max_header_bytes
        ):
            self._refusal = 431
            raise _HeadRefused
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._stop_awaiting_head()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._in_message = False
        super().on_message_complete()
        if self.cycle is None or not self.cycle.response_complete or self.transport.is_closing():
            return
        # Answered before its body ended: idle from now on, as after any response.
        self._await_head()
        if self.timeout_keep_alive_task is None:
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler
            )

    # --- head state -------------------------------------------------------------------------------

    def _await_head(self) -> None:
        self._awaiting_head = True
        self._head_bytes = 0
        if self.cycle is None or self.cycle.response_complete:
            self._waiting.add(self)

    def _stop_awaiting_head(self) -> None:
        self._awaiting_head = False
        self._head_bytes = 0
        self._waiting.discard(self)
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _arm_head_timer(self) -> None:
        self._head_timer = self.loop.call_later(self.limits.header_timeout_s, self._head_timed_out)

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self._head_bytes:
            self._refuse(408)
        else:
            self.transport.close()

    # --- answering --------------------------------------------------------------------------------

    def _refuse(self, status: int) -> None:
        self._stop_awaiting_head()
        self.connections.discard(self)
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            self.transport.close()  # a pipelined head overflowed mid-response: no clean answer
            return
        self._answer_and_linger(status)

    def _answer_and_linger(self, status: int) -> None:
        body = REASONS[status]
        head = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head += [
            b"content-type: text/plain; charset=utf-8\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n\r\n",
            body,
        ]
        self.transport.write(b"".join(head))
        # Closing with unread input sends a reset, which can destroy the answer before the client
        # reads it: half-close, read and drop what still arrives, then close.
        self._lingering = True
        self.transport.resume_reading()
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._linger_timer = self.loop.call_later(LINGER_S, self.transport.close)
