"""The ASGI application: a pure-ASGI front (no middleware stack) over the route table.

`GatewayApp` owns the runtime holder and the lifespan: on startup it loads the config's models in
a background thread, so the process answers `/ready` (503) while they load. For each request it
matches the route, checks the route's access (authenticating the caller once, here), runs the
handler, and renders any `GatewayError` in the route's protocol.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import os
import signal
import traceback
from collections.abc import Callable
from typing import Any

from gateway.config.loading import LoadedConfig, load_config_file
from gateway.config.reload import Reloader
from gateway.config.schema import Access
from gateway.config.triggers import ReloadTriggers
from gateway.errors import (
    ConfigError,
    ConfigIssue,
    EndpointNotFound,
    GatewayError,
    MethodNotAllowed,
    PermissionDenied,
    Protocol,
    render,
    render_stream_event,
)
from gateway.http import (
    ClientDisconnected,
    Request,
    Response,
    StreamingResponse,
    client_request_id,
    tapped,
)
from gateway.limits import open_limiter
from gateway.metering.metrics import Metrics
from gateway.metering.recorder import UsageRecorder
from gateway.metering.tags import DATABRICKS_TAGS, TAGS, parse_tags
from gateway.router import Router
from gateway.routes import ROUTES, AccessSetting, OpenRoute
from gateway.runtime import Runtime, RuntimeHolder, build_runtime, freeze_loaded_objects
from gateway.state import Caller, GatewayState

logger = logging.getLogger("gateway")

REQUEST_ID = b"x-request-id"
GATEWAY_REQUEST_ID = b"x-gateway-request-id"
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
        reloader = Reloader(self.holder, build, loaded.source, metrics)
        self.state = GatewayState(
            runtimes=self.holder,
            usage=UsageRecorder(metrics),
            metrics=metrics,
            limiter=limiter,
            reloader=reloader,
        )
        self._triggers = ReloadTriggers(reloader, self.holder, metrics)
        self._router = Router(ROUTES)
        self._on_fatal = on_fatal
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
            not_found = self._error_response(EndpointNotFound(f"No route for {path}."), "mlflow")
            await not_found.send(send, [])
            return
        route, params = matched
        request = Request(scope, receive, params, route.path)
        # The ledger's key is ours: a client's id could claim (and so erase) another's row.
        request.request_id = os.urandom(12).hex()
        extra = [(REQUEST_ID, request.request_id.encode())]
        response: Response | StreamingResponse
        try:
            client_id = request.header(REQUEST_ID)
            if client_id is not None:
                request.client_request_id = client_request_id(client_id)
                # Echoed as the client sent it; ours goes beside it.
                extra = [(REQUEST_ID, client_id), (GATEWAY_REQUEST_ID, extra[0][1])]
            request.tags = parse_tags(request.header(TAGS), request.header(DATABRICKS_TAGS))
            if scope["method"] not in route.methods:
                raise MethodNotAllowed(f"Method {scope['method']} is not allowed on {path}.")
            if isinstance(route, OpenRoute):
                if route.setting is not None:
                    await self._check_setting(request, route.setting)
                response = await route.handler(request, self.state)
            else:
                caller = await self._authenticate(request, route.access)
                response = await route.handler(request, self.state, caller)
        except GatewayError as error:
            response = self._error_response(error, route.protocol)
        except ClientDisconnected:
            if request.tap is not None:
                request.tap.sent()  # nothing was
            return
        except Exception:
            logger.exception("unexpected error on %s %s", scope["method"], path)
            response = self._error_response(GatewayError("Internal error."), route.protocol)
        if request.config_version:
            extra.append((CONFIG_VERSION, request.config_version.encode()))
        tap = request.tap  # a sampled call's inference-table row: it keeps what is sent
        if tap is not None:
            send = tapped(send, tap)
        try:
            if isinstance(response, StreamingResponse):
                response.error_event = functools.partial(
                    render_stream_event, protocol=route.protocol
                )
                await response.send(send, extra, receive)
            else:
                await response.send(send, extra)
        finally:
            if tap is not None:
                tap.sent()

    async def _authenticate(self, request: Request, access: Access) -> Caller:
        """Who is calling (401 when nobody valid; 403 on an admin route without the role)."""
        runtime = self.state.runtime_for(request)
        principal = await runtime.keyring.authenticate(
            request.header(b"authorization"), request.header(b"x-api-key")
        )
        if access == "admin" and "admin" not in principal.roles:
            raise PermissionDenied(f"{principal.id!r} does not have the admin role.")
        return Caller(runtime, principal)

    async def _check_setting(self, request: Request, setting: AccessSetting) -> None:
        """An open route the config closed (`server.access`); open while nothing is loaded
        only if the file it was started with leaves it open."""
        runtime = self.holder.current
        config = runtime.loaded.config if runtime is not None else self.loaded.config
        access: Access = getattr(config.server.access, setting)
        if access != "open":
            await self._authenticate(request, access)

    def _error_response(self, error: GatewayError, protocol: Protocol) -> Response:
        runtime = self.holder.current  # the setting of the config serving now
        expose = runtime is not None and runtime.loaded.config.server.expose_stack_traces
        body = render(error, protocol, expose_stack_traces=expose)
        headers = [(SERVED_MODEL, error.served_model.encode())] if error.served_model else []
        if error.status == 429 and error.retry_after_s is not None:
            headers.append((b"retry-after", str(max(1, math.ceil(error.retry_after_s))).encode()))
        return Response(error.status, body, headers=headers)

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
            self.state.usage.open_tables(self.loaded.config.inference_table, self.loaded.base_dir)
            self.state.usage.open_tracing(self.loaded.config.tracing)
            runtime = await asyncio.to_thread(self._build, self.loaded, None)
        except Exception as exc:
            scrub = self.loaded.substitutions.scrub  # never log a value read from the environment
            if isinstance(exc, ConfigError):
                failure = self.loaded.substitutions.scrub_error(exc)
            else:
                issue = ConfigIssue("", scrub(f"loading failed: {type(exc).__name__}: {exc}"))
                failure = ConfigError([issue])
                logger.error("loading failed:\n%s", scrub(traceback.format_exc()))
            self.holder.failure = failure
            logger.error("cannot load the models of the config:\n%s", failure)
            if self._on_fatal is not None:
                self._on_fatal()
            return
        self.holder.current = runtime
        freeze_loaded_objects()
        self.state.reloader.activated(runtime)
        self._triggers.start(self.loaded)
        self._warming = [asyncio.create_task(warm()) for warm in runtime.warm_ups()]
        logger.info(
            "ready: config version %s, endpoints: %s",
            self.loaded.version,
            self.loaded.substitutions.scrub(", ".join(runtime.endpoints)) or "(none)",
        )

    async def _shutdown(self) -> None:
        for task in [self._loading, *self._warming]:
            if task is not None and not task.done():
                task.cancel()
        await self._triggers.aclose()
        await self.state.reloader.aclose()
        runtime = self.holder.current
        if runtime is not None:
            await runtime.aclose()
        # drains the ledger's spool into its database; writes the inference table's buffers
        await self.state.usage.aclose()
        await self.state.limiter.aclose()


def create_app() -> GatewayApp:
    """App factory for `uvicorn --factory` and worker processes: the config path is in the env."""
    path = os.environ.get(CONFIG_ENV)
    if not path:
        raise RuntimeError(f"set {CONFIG_ENV} to the config file's path")
    return GatewayApp(load_config_file(path), on_fatal=_stop_server_processes)


def _stop_server_processes() -> None:
    """A config whose models cannot load must stop the server, not leave it unready forever."""
    if os.environ.get("GATEWAY_SUPERVISED") == "1":
        os.kill(os.getppid(), signal.SIGTERM)  # uvicorn's worker supervisor
    os.kill(os.getpid(), signal.SIGTERM)
