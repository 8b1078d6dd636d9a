"""The ASGI application: a pure-ASGI front (no middleware stack) over the route table.

`GatewayApp` owns the runtime holder and the lifespan: on startup it loads the config's models in
a background thread, so the process answers `/ready` (503) while they load.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import signal
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from gateway import anthropic_format
from gateway.config_file import LoadedConfig, load_config_file
from gateway.errors import (
    ConfigError,
    ConfigIssue,
    EndpointNotFound,
    GatewayError,
    MethodNotAllowed,
    render_mlflow,
    render_openai,
)
from gateway.http import ClientDisconnected, Request, Response, StreamingResponse
from gateway.limits import open_limiter
from gateway.metering.recorder import UsageRecorder
from gateway.metrics import Metrics
from gateway.reload import Reloader
from gateway.router import Router
from gateway.routes import DOCS_PATHS, ROUTES, Protocol
from gateway.runtime import (
    Runtime,
    RuntimeHolder,
    build_runtime,
    freeze_loaded_objects,
    registry_moved,
)
from gateway.state import GatewayState

logger = logging.getLogger("gateway")

REQUEST_ID = b"x-request-id"
SERVED_MODEL = b"x-served-model"
CONFIG_VERSION = b"x-config-version"
CONFIG_ENV = "GATEWAY_CONFIG"


class GatewayApp:
    def __init__(self, loaded: LoadedConfig, *, on_fatal: Callable[[], None] | None = None) -> None:
        self.loaded = loaded
        self.holder = RuntimeHolder()
        metrics = Metrics()
        limiter = open_limiter(loaded.config.limits)

        def build(config: LoadedConfig, previous: Runtime | None) -> Runtime:
            return build_runtime(config, limiter=limiter, metrics=metrics, previous=previous)

        self._build = build
        self.state = GatewayState(
            runtimes=self.holder,
            usage=UsageRecorder(metrics),
            metrics=metrics,
            limiter=limiter,
            reloader=Reloader(self.holder, build, loaded.source, metrics),
        )
        self._tasks: set[asyncio.Task[None]] = set()
        self._router = Router(ROUTES)
        self._on_fatal = on_fatal
        self._docs_app: Any = None
        self._loading: asyncio.Task[None] | None = None
        self._warming: list[asyncio.Task[None]] = []
        if loaded.config.auth is None:
            logger.warning(
                "NO AUTH CONFIGURED: the gateway is open to anyone who can reach it."
                " Add an `auth.keys` section (see `gateway keys new`)."
            )

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    # --- HTTP ---------------------------------------------------------------------------------

    async def _http(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope["path"]
        matched = self._router.match(path)
        if matched is None:
            if path in DOCS_PATHS:
                await self._docs(scope, receive, send)
                return
            not_found = _error_response(EndpointNotFound(f"No route for {path}."), "mlflow", False)
            await not_found.send(send, [])
            return
        route, params = matched
        request = Request(scope, receive, params)
        request_id = request.header(REQUEST_ID) or os.urandom(12).hex().encode()
        request.request_id = request_id.decode("latin-1")
        extra = [(REQUEST_ID, request_id)]
        response: Response | StreamingResponse
        try:
            if scope["method"] not in route.methods:
                raise MethodNotAllowed(f"Method {scope['method']} is not allowed on {path}.")
            response = await route.handler(request, self.state)
        except GatewayError as error:
            runtime = self.holder.current  # the setting of the config serving now
            expose = runtime is not None and runtime.loaded.config.server.expose_stack_traces
            response = _error_response(error, route.protocol, expose)
        except ClientDisconnected:
            return
        except Exception:
            logger.exception("unexpected error on %s %s", scope["method"], path)
            response = _error_response(GatewayError("Internal error."), route.protocol, False)
        if request.config_version:
            extra.append((CONFIG_VERSION, request.config_version.encode()))
        if isinstance(response, StreamingResponse):
            await response.send(send, extra, receive)
        else:
            await response.send(send, extra)

    async def _docs(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if self._docs_app is None:
            from gateway.api.openapi import build_docs_app

            self._docs_app = build_docs_app()
        await self._docs_app(scope, receive, send)

    # --- lifespan -----------------------------------------------------------------------------

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self._loading = asyncio.create_task(self._load())
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self._shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _load(self) -> None:
        try:
            await self.state.usage.open_ledger(self.loaded.config.usage, self.loaded.base_dir)
            runtime = await asyncio.to_thread(self._build, self.loaded, None)
        except Exception as exc:
            failure = (
                exc
                if isinstance(exc, ConfigError)
                else ConfigError([ConfigIssue("", f"loading failed: {type(exc).__name__}: {exc}")])
            )
            self.holder.failure = failure
            logger.error(
                "cannot load the models of the config:\n%s", failure, exc_info=failure is not exc
            )
            if self._on_fatal is not None:
                self._on_fatal()
            return
        self.holder.current = runtime
        freeze_loaded_objects()
        self.state.reloader.activated(runtime)
        self._watch_for_reloads()
        self._warming = [asyncio.create_task(warm()) for warm in runtime.warm_ups()]
        logger.info(
            "ready: config version %s, endpoints: %s",
            self.loaded.version,
            ", ".join(runtime.endpoints) or "(none)",
        )

    def _watch_for_reloads(self) -> None:
        """SIGHUP re-reads the config file; registry aliases are re-resolved every poll_s."""
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not the main thread
            loop.add_signal_handler(signal.SIGHUP, lambda: self._spawn(self._reload_quietly(None)))
        self._spawn(self._poll_registry())
        config = self.loaded.config
        url = config.reload.broadcast or (
            config.limits.store if config.limits.store.startswith("redis") else None
        )
        if url is not None:
            from gateway.broadcast import ReloadBroadcast

            async def follow(text: str) -> None:
                with contextlib.suppress(ConfigError):
                    await self.state.reloader.reload(text, broadcast=False)

            broadcast = ReloadBroadcast(url, config.reload.channel, follow)
            broadcast.start()
            self.state.reloader.broadcast = broadcast
        if config.reload.watch and self.loaded.source is not None:
            self._spawn(self._watch_file(self.loaded.source))

    async def _watch_file(self, path: Path) -> None:
        """Re-read the file when it changes (mtime or size), checked every second."""

        def signature() -> tuple[float, int] | None:
            try:
                stat = path.stat()
            except OSError:
                return None
            return (stat.st_mtime, stat.st_size)

        seen = signature()
        while True:
            await asyncio.sleep(1.0)
            current = signature()
            if current is not None and current != seen:
                seen = current
                await self._reload_quietly(None)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reload_quietly(self, text: str | None) -> None:
        with contextlib.suppress(ConfigError):  # logged and kept on /admin/config
            await self.state.reloader.reload(text)

    async def _poll_registry(self) -> None:
        """When an alias (or /latest) points to a new version, re-apply the running config:
        the new version loads beside the old one, which serves until the swap."""
        while True:
            runtime = self.holder.get()
            poll_s = runtime.loaded.config.registry.poll_s
            if poll_s <= 0:
                return
            await asyncio.sleep(poll_s)
            runtime = self.holder.get()
            try:
                moved = await asyncio.to_thread(registry_moved, runtime)
            except Exception:
                logger.warning("cannot poll the model registry", exc_info=True)
                continue
            if moved:
                logger.info("registry aliases moved: %s", ", ".join(moved))
                await self._reload_quietly(runtime.loaded.text)

    async def _shutdown(self) -> None:
        for task in [self._loading, *self._warming, *self._tasks]:
            if task is not None and not task.done():
                task.cancel()
        await self.state.reloader.aclose()
        runtime = self.holder.current
        if runtime is not None:
            await runtime.aclose()
        await self.state.usage.aclose()  # drains the ledger's spool into its database
        await self.state.limiter.aclose()


def _error_response(error: GatewayError, protocol: Protocol, expose: bool) -> Response:
    if protocol == "openai":
        body = render_openai(error)
    elif protocol == "anthropic":
        body = anthropic_format.error_body(error)
    else:
        body = render_mlflow(error, expose_stack_traces=expose)
    headers = [(SERVED_MODEL, error.served_model.encode())] if error.served_model else []
    if error.status == 429 and error.retry_after_s is not None:
        headers.append((b"retry-after", str(max(1, math.ceil(error.retry_after_s))).encode()))
    return Response(error.status, body, headers=headers)


def create_app() -> GatewayApp:
    """App factory for `uvicorn --factory` and worker processes: the config path is in the env."""
    path = os.environ.get(CONFIG_ENV)
    if not path:
        raise RuntimeError(f"set {CONFIG_ENV} to the config file's path")
    return GatewayApp(load_config_file(path), on_fatal=_stop_server_processes)


def _stop_server_processes() -> None:
    """A config whose models cannot load must stop the server, not leave it unready forever."""
    import signal

    if os.environ.get("GATEWAY_SUPERVISED") == "1":
        os.kill(os.getppid(), signal.SIGTERM)  # uvicorn's worker supervisor
    os.kill(os.getpid(), signal.SIGTERM)
