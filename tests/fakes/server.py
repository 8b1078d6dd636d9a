"""Base of the fake upstreams: an aiohttp app on 127.0.0.1, request recording and fault injection.

In tests a fake runs in a background thread with its own event loop:

    with FakeOpenAI() as fake:          # binds port 0, reads the real port
        fake.base_url                   # e.g. http://127.0.0.1:41234/v1
        fake.inject("status", status=503)
        ...

As its own process (benchmarks): `python -m tests.fakes.openai_upstream --port P` runs `main()`:
no request recording, no access log, uvloop when installed, zero delay unless `--delay`.

Subclasses provide `routes()` and their provider's error shape (`error_body`) and API-key header
(`presented_key`); handlers answer through `send_json` / `send_events` / `error_response`, which
apply the fault the request drew.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import signal
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ClassVar, Literal, NamedTuple, NoReturn, Self, get_args

from aiohttp import web

FaultKind = Literal["status", "delay", "reset", "stall", "break", "malformed", "no_usage"]

# option -> required?, per fault kind
_FAULT_OPTIONS: dict[str, dict[str, bool]] = {
    "status": {
        "status": True,
        "message": False,
        "error_type": False,
        "code": False,
        "retry_after": False,
        "headers": False,
    },
    "delay": {"seconds": True},
    "reset": {},
    "stall": {"after": False, "seconds": False},
    "break": {"after": False},
    "malformed": {"body": False},
    "no_usage": {},
}
assert set(_FAULT_OPTIONS) == set(get_args(FaultKind))

DEFAULT_CUT_AFTER = 1  # stall/break: events (or, non-streaming, nothing / half the body) sent first
DEFAULT_STALL_SECONDS = 60.0
DEFAULT_RETRY_AFTER = "1"  # 429 without a `retry_after` option
MALFORMED_BODY = b'{"id": "truncated", "object": <this is not json'
SHUTDOWN_GRACE_SECONDS = 0.2  # in-flight handlers (stalled streams) are cancelled after this

JSON_TYPE = "application/json"
SSE_TYPE = "text/event-stream"
SSE_DONE = b"data: [DONE]\n\n"


class RecordedRequest(NamedTuple):
    """One request as received: lower-case header names; parsed JSON body (None: absent/invalid)."""

    path: str
    headers: dict[str, str]
    body: Any


@dataclass(frozen=True)
class Fault:
    kind: FaultKind
    options: Mapping[str, Any]
    path: str | None = None

    def matches(self, path: str) -> bool:
        return self.path is None or self.path == path

    def option(self, name: str, default: Any = None) -> Any:
        return self.options.get(name, default)


@dataclass
class _Pending:
    fault: Fault
    remaining: int


class FaultQueue:
    """FIFO of faults, each drawn by one request (`times` times if injected so)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: deque[_Pending] = deque()

    def push(self, fault: Fault, times: int) -> None:
        with self._lock:
            self._entries.append(_Pending(fault, times))

    def take(self, path: str) -> Fault | None:
        with self._lock:
            entry = next((entry for entry in self._entries if entry.fault.matches(path)), None)
            if entry is None:
                return None
            entry.remaining -= 1
            if entry.remaining == 0:
                self._entries.remove(entry)
            return entry.fault

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        with self._lock:
            return sum(entry.remaining for entry in self._entries)


def make_fault(kind: str, times: int, path: str | None, options: Mapping[str, Any]) -> Fault:
    if kind not in _FAULT_OPTIONS:
        raise ValueError(f"unknown fault kind {kind!r}; expected one of {sorted(_FAULT_OPTIONS)}")
    if times < 1:
        raise ValueError(f"times must be >= 1, not {times}")
    allowed = _FAULT_OPTIONS[kind]
    if unknown := set(options) - set(allowed):
        raise ValueError(
            f"fault {kind!r} takes no option(s) {sorted(unknown)}; allowed: {sorted(allowed)}"
        )
    if missing := [name for name, required in allowed.items() if required and name not in options]:
        raise ValueError(f"fault {kind!r} needs option(s) {missing}")
    return Fault(kind, dict(options), path)  # type: ignore[arg-type]  # checked above


@dataclass
class Exchange:
    """A request being handled: its parsed body and the fault it drew."""

    request: web.Request
    body: Any
    fault: Fault | None
    aborted: bool = False  # the fake itself dropped the connection (reset/break), not the client

    def has_fault(self, kind: FaultKind) -> bool:
        return self.fault is not None and self.fault.kind == kind

    @property
    def stream(self) -> bool:
        return isinstance(self.body, dict) and self.body.get("stream") is True

    @property
    def with_usage(self) -> bool:
        return not self.has_fault("no_usage")


Handler = Callable[[Exchange], Awaitable[web.StreamResponse]]
Route = tuple[str, str, Handler]


def dumps(payload: Any) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


def sse_data(payload: Any) -> bytes:
    return b"data: " + dumps(payload) + b"\n\n"


def sse_event(name: str, payload: Any) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + dumps(payload) + b"\n\n"


def problem_with(body: Any, schema: Mapping[str, type | tuple[type, ...]]) -> str | None:
    """Why `body` is not an object with these (non-empty, typed) fields, or None if it is."""
    if not isinstance(body, dict):
        return "The request body must be a JSON object."
    for name, expected in schema.items():
        value = body.get(name)
        if value is None:
            return f"{name}: Field required"
        if not isinstance(value, expected) or isinstance(value, bool) or value in ("", []):
            return f"{name}: Invalid value"
    return None


def bearer_token(request: web.Request) -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token if scheme == "Bearer" else None


def wait_until(
    predicate: Callable[[], bool], timeout: float = 2.0, interval: float = 0.005
) -> bool:
    """Poll `predicate` (e.g. `lambda: fake.cancelled == 1`) until true or `timeout` s pass."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
    return True


async def _read_json(request: web.Request) -> Any:
    raw = await request.read()
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


async def _write_all(response: web.StreamResponse, chunks: Iterable[bytes]) -> None:
    for chunk in chunks:
        await response.write(chunk)  # one write per event: each goes out on its own


async def _flushed(transport: asyncio.Transport, timeout: float = 1.0) -> None:
    deadline = time.monotonic() + timeout
    while transport.get_write_buffer_size() and time.monotonic() < deadline:
        await asyncio.sleep(0.001)


def _fault_delay(fault: Fault | None) -> float:
    return float(fault.option("seconds")) if fault is not None and fault.kind == "delay" else 0.0


def _linger_zero(transport: asyncio.Transport) -> None:
    """Make the close send a TCP RST instead of a FIN."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


class FakeUpstream:
    """Shared base; see the module docstring. The public API is thread-safe (test thread)."""

    api_prefix: ClassVar[str] = ""  # base_url = url + api_prefix
    default_models: ClassVar[tuple[str, ...]] = ()
    auth_error_message: ClassVar[str] = "Invalid API key."

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str | None = None,
        models: Sequence[str] | None = None,
        record: bool = True,
    ) -> None:
        self.host = host
        self.port = port  # the real port once started
        self.api_key = api_key  # when set, requests presenting another key get a 401
        self.models: tuple[str, ...] = tuple(models) if models is not None else self.default_models
        self._record = record
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._faults = FaultQueue()
        self._in_flight = 0
        self._cancelled = 0
        self._delay = 0.0
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._error: BaseException | None = None

    # ----- provider conventions (subclasses) -----

    def routes(self) -> list[Route]:
        raise NotImplementedError

    def error_body(
        self, status: int, message: str, error_type: str | None, code: str | None
    ) -> dict[str, Any]:
        raise NotImplementedError

    def presented_key(self, request: web.Request) -> str | None:
        raise NotImplementedError

    def reject(self, exchange: Exchange) -> web.StreamResponse | None:
        """An error for a request the provider refuses before looking at it (bad key), or None."""
        if self.api_key is not None and self.presented_key(exchange.request) != self.api_key:
            return self.error_response(401, self.auth_error_message)
        return None

    # ----- public API -----

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        return self.url + self.api_prefix

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of the requests received so far, oldest first."""
        with self._lock:
            return list(self._requests)

    @property
    def in_flight(self) -> int:
        with self._lock:
            return self._in_flight

    @property
    def cancelled(self) -> int:
        with self._lock:
            return self._cancelled

    @property
    def faults_pending(self) -> int:
        return len(self._faults)

    def inject(
        self, kind: FaultKind, times: int = 1, *, path: str | None = None, **options: Any
    ) -> None:
        """Queue a fault for the next `times` requests (only to `path` if given)."""
        self._faults.push(make_fault(kind, times, path, options), times)

    def delay_all(self, seconds: float) -> None:
        """Delay every response by `seconds` before its first byte (0 to stop)."""
        with self._lock:
            self._delay = seconds

    def clear(self) -> None:
        """Forget recorded requests and the cancelled count."""
        with self._lock:
            self._requests.clear()
            self._cancelled = 0

    def reset(self) -> None:
        """`clear()`, and drop pending faults and `delay_all`."""
        self.clear()
        self._faults.clear()
        self.delay_all(0.0)

    def start(self) -> Self:
        if self._thread is not None:
            raise RuntimeError(f"{type(self).__name__} is already running")
        ready = threading.Event()
        self._error = None
        self._thread = threading.Thread(
            target=self._run_in_thread,
            args=(ready,),
            name=f"{type(self).__name__}-server",
            daemon=True,
        )
        self._thread.start()
        ready.wait()
        if self._error is not None:
            self._thread.join()
            self._thread = None
            raise RuntimeError(f"{type(self).__name__} failed to start") from self._error
        return self

    def stop(self) -> None:
        thread, loop, stopping = self._thread, self._loop, self._stopping
        if thread is None:
            return
        if loop is not None and stopping is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                loop.call_soon_threadsafe(stopping.set)
        thread.join()
        self._thread = self._loop = self._stopping = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ----- serving -----

    def _run_in_thread(self, ready: threading.Event) -> None:
        try:
            asyncio.run(self._serve_until_stopped(ready.set))
        except BaseException as exc:  # reported by start(); a thread must not raise
            self._error = exc
        finally:
            ready.set()

    async def _serve_until_stopped(self, on_ready: Callable[[], None]) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        await self._serve(self._stopping, on_ready)

    async def _serve_until_signalled(self, backlog: int) -> None:
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stopping.set)

        def announce() -> None:
            print(f"{type(self).__name__} listening on {self.base_url}", flush=True)

        await self._serve(stopping, announce, backlog=backlog)

    async def _serve(
        self, stopping: asyncio.Event, on_ready: Callable[[], None], backlog: int = 128
    ) -> None:
        runner = web.AppRunner(
            self._app(),
            handler_cancellation=True,
            access_log=None,
            shutdown_timeout=SHUTDOWN_GRACE_SECONDS,
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self.port, backlog=backlog)
            await site.start()
            self.port = site.port
            on_ready()
            await stopping.wait()
        finally:
            await runner.cleanup()

    def _app(self) -> web.Application:
        app = web.Application()
        for method, path, handler in [*self.routes(), ("*", "/{tail:.*}", self._not_found)]:
            app.router.add_route(method, path, self._endpoint(handler))
        return app

    def _endpoint(self, handler: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def endpoint(request: web.Request) -> web.StreamResponse:
            return await self._dispatch(request, handler)

        return endpoint

    async def _not_found(self, exchange: Exchange) -> web.StreamResponse:
        request = exchange.request
        return self.error_response(404, f"Invalid URL ({request.method} {request.path})")

    # ----- per request: recording, accounting, faults -----

    async def _dispatch(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        exchange = Exchange(request, await _read_json(request), self._faults.take(request.path))
        if self._record:
            self._remember(request, exchange.body)
        self._count_in_flight(+1)
        try:
            return await self._respond(exchange, handler)
        except (asyncio.CancelledError, ConnectionResetError) as exc:
            if not exchange.aborted:
                self._count_cancelled()
            if isinstance(exc, ConnectionResetError):
                raise asyncio.CancelledError from exc  # ends quietly, as a disconnect does
            raise
        finally:
            self._count_in_flight(-1)

    async def _respond(self, exchange: Exchange, handler: Handler) -> web.StreamResponse:
        fault = exchange.fault
        if delay := self._delay + _fault_delay(fault):
            await asyncio.sleep(delay)
        if fault is not None and fault.kind == "status":
            return self._status_fault(fault)
        if fault is not None and fault.kind == "reset":
            await self._abort(exchange, hard=True)
        if fault is not None and fault.kind == "malformed":
            return web.Response(body=fault.option("body", MALFORMED_BODY), content_type=JSON_TYPE)
        refusal = self.reject(exchange)
        return refusal if refusal is not None else await handler(exchange)

    def _remember(self, request: web.Request, body: Any) -> None:
        headers = {name.lower(): value for name, value in request.headers.items()}
        with self._lock:
            self._requests.append(RecordedRequest(request.path, headers, body))

    def _count_in_flight(self, delta: int) -> None:
        with self._lock:
            self._in_flight += delta

    def _count_cancelled(self) -> None:
        with self._lock:
            self._cancelled += 1

    def _status_fault(self, fault: Fault) -> web.Response:
        status = int(fault.option("status"))
        headers = dict(fault.option("headers", {}))
        retry_after = fault.option("retry_after", DEFAULT_RETRY_AFTER if status == 429 else None)
        if retry_after is not None:
            headers["Retry-After"] = str(retry_after)
        message = fault.option("message", f"Injected fault: HTTP {status}")
        return self.error_response(
            status,
            message,
            error_type=fault.option("error_type"),
            code=fault.option("code"),
            headers=headers,
        )

    async def _abort(self, exchange: Exchange, *, hard: bool) -> NoReturn:
        """Drop the connection: a RST (`hard`), or a plain close once the writes are flushed."""
        exchange.aborted = True
        transport = exchange.request.transport
        if transport is not None:
            if hard:
                _linger_zero(transport)
            else:
                await _flushed(transport)
            transport.abort()
        raise asyncio.CancelledError  # ends the handler without a response, like a disconnect

    async def _interrupt(self, exchange: Exchange) -> None:
        """Stall (pause `seconds`, then carry on) or break (drop the connection) a reply."""
        fault = exchange.fault
        if fault is not None and fault.kind == "stall":
            await asyncio.sleep(float(fault.option("seconds", DEFAULT_STALL_SECONDS)))
        elif fault is not None and fault.kind == "break":
            await self._abort(exchange, hard=False)

    def _cut_after(self, exchange: Exchange) -> int | None:
        fault = exchange.fault
        if fault is None or fault.kind not in ("stall", "break"):
            return None
        return int(fault.option("after", DEFAULT_CUT_AFTER))

    # ----- responses (for subclasses' handlers) -----

    def error_response(
        self,
        status: int,
        message: str,
        *,
        error_type: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> web.Response:
        body = dumps(self.error_body(status, message, error_type, code))
        return web.Response(status=status, body=body, content_type=JSON_TYPE, headers=headers)

    async def send_json(self, exchange: Exchange, payload: Any) -> web.StreamResponse:
        """A 200 JSON answer. Stall: nothing for `seconds` first; break: half the body, a drop."""
        body = dumps(payload)
        if self._cut_after(exchange) is None:
            return web.Response(body=body, content_type=JSON_TYPE)
        if exchange.has_fault("stall"):
            await self._interrupt(exchange)
            return web.Response(body=body, content_type=JSON_TYPE)
        response = web.StreamResponse(headers={"Content-Type": JSON_TYPE})
        response.content_length = len(body)
        await response.prepare(exchange.request)
        await response.write(body[: len(body) // 2])
        await self._abort(exchange, hard=False)

    async def send_events(self, exchange: Exchange, events: Sequence[bytes]) -> web.StreamResponse:
        """A 200 server-sent-event stream, one write per event; stall/break after `after` events."""
        response = web.StreamResponse(
            headers={"Content-Type": SSE_TYPE, "Cache-Control": "no-cache"}
        )
        await response.prepare(exchange.request)
        cut = self._cut_after(exchange)
        if cut is None:
            await _write_all(response, events)
        else:
            await _write_all(response, events[:cut])
            await self._interrupt(exchange)
            await _write_all(response, events[cut:])
        await response.write_eof()
        return response


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    if importlib.util.find_spec("uvloop") is None:
        return None
    import uvloop

    return uvloop.new_event_loop


def main(fake_type: type[FakeUpstream], argv: Sequence[str] | None = None) -> None:
    """Run `fake_type` in the foreground until SIGINT/SIGTERM; lean: no recording, no access log."""
    parser = argparse.ArgumentParser(
        description=f"Run {fake_type.__name__} as a standalone server."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument(
        "--port", type=int, default=0, help="0 picks a free port (printed on start)"
    )
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before every response")
    parser.add_argument("--backlog", type=int, default=1024)
    args = parser.parse_args(argv)
    fake = fake_type(host=args.host, port=args.port, record=False)
    fake.delay_all(args.delay)
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(fake._serve_until_signalled(args.backlog))
