"""Health routes: open to everyone, never blocked by model work."""

from __future__ import annotations

import orjson

from gateway import __version__
from gateway.config.redaction import describe
from gateway.http import Request, Response
from gateway.state import GatewayState

_NOT_READY = orjson.dumps({"status": "loading"})


async def ping(request: Request, state: GatewayState) -> Response:
    """MLflow's `/ping` and `/health`: 200 once the models are loaded (503 until then)."""
    if state.runtimes.current is None:
        return Response(503, _NOT_READY)
    return Response(200, b"\n")


async def live(request: Request, state: GatewayState) -> Response:
    """Liveness: the process answers."""
    return Response(200, b'{"status":"ok"}')


async def ready(request: Request, state: GatewayState) -> Response:
    runtime = state.runtimes.current
    if runtime is None:
        failure = str(state.runtimes.failure) if state.runtimes.failure else None
        return Response(503, orjson.dumps({"ready": False, "error": failure}))
    return Response(
        200,
        orjson.dumps(
            {
                "ready": True,
                "config_version": runtime.loaded.version,
                "endpoints": describe(
                    runtime.loaded,
                    {name: endpoint.describe() for name, endpoint in runtime.endpoints.items()},
                ),
            }
        ),
    )


async def version(request: Request, state: GatewayState) -> Response:
    """MLflow's `/version`: the bare MLflow version, which `ScoringServerClient.get_version`
    compares (MLflow labels it JSON; it is not, so it goes as text)."""
    return Response(200, _mlflow_version().encode(), content_type=b"text/plain; charset=utf-8")


async def gateway_version(request: Request, state: GatewayState) -> Response:
    """The gateway's version, and MLflow's beside it."""
    return Response(200, orjson.dumps({"gateway": __version__, "mlflow": _mlflow_version()}))


def _mlflow_version() -> str:
    from importlib.metadata import version as package_version

    return package_version("mlflow")
