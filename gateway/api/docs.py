"""`GET /`, `/openapi.json`, `/docs` and `/docs/assets/{file}`: open routes, MLflow's error shape.

Swagger UI's files come from the `swagger_ui_bundle` package (installed from the registry), never
from a CDN, so the page works offline. Only the files the page uses are served, by exact name,
so a `{file}` cannot reach anything else on disk.
"""

from __future__ import annotations

import functools
from typing import Any

import orjson

from gateway import __version__
from gateway.api import openapi
from gateway.errors import EndpointNotFound
from gateway.http import Request, Response
from gateway.state import GatewayState

ASSETS = "/docs/assets/"
SPEC_30 = "openapi-3.0.json"  # generated: the document in the dialect Swagger UI 4 renders
_BUNDLE_FILES: dict[str, bytes] = {
    "swagger-ui.css": b"text/css; charset=utf-8",
    "swagger-ui-bundle.js": b"text/javascript; charset=utf-8",
    "favicon-32x32.png": b"image/png",
    "favicon-16x16.png": b"image/png",
}
_CACHED = [(b"cache-control", b"public, max-age=3600")]

_PAGE = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>gateway {__version__}: API</title>
<link rel="stylesheet" href="{ASSETS}swagger-ui.css">
<link rel="icon" type="image/png" href="{ASSETS}favicon-32x32.png" sizes="32x32">
</head>
<body>
<div id="swagger-ui"></div>
<script src="{ASSETS}swagger-ui-bundle.js"></script>
<script>
// The OpenAPI 3.1 document is /openapi.json; this Swagger UI renders its 3.0 rendering.
window.ui = SwaggerUIBundle({{
  url: "{ASSETS}{SPEC_30}",
  dom_id: "#swagger-ui",
  deepLinking: true,
  presets: [SwaggerUIBundle.presets.apis],
  layout: "BaseLayout",
}});
</script>
</body>
</html>
""".encode()


def index_body() -> bytes:
    links = {"docs": "/docs", "openapi": "/openapi.json"}
    links.update((path.strip("/"), path) for path in openapi.HEALTH_LINKS)
    return orjson.dumps({"name": "gateway", "version": __version__, "links": links})


def docs_page() -> bytes:
    return _PAGE


def docs_asset(name: str) -> tuple[bytes, bytes] | None:
    """A whitelisted asset's bytes and content type; None for any other name."""
    if name != SPEC_30 and name not in _BUNDLE_FILES:
        return None
    return _read_asset(name)


@functools.cache  # bounded: only whitelisted names get here
def _read_asset(name: str) -> tuple[bytes, bytes]:
    if name == SPEC_30:
        return openapi_30_document(), b"application/json"
    from swagger_ui_bundle import swagger_ui_path

    return (swagger_ui_path / name).read_bytes(), _BUNDLE_FILES[name]


@functools.cache
def openapi_30_document() -> bytes:
    """The same document in OpenAPI 3.0's dialect, for the bundled Swagger UI (4.x), which
    renders only 3.0: nullable types, `enum` for `const`, one `example`."""
    converted = _as_30(openapi.document())
    converted["openapi"] = "3.0.3"
    return orjson.dumps(converted)


def _as_30(node: Any) -> Any:
    if isinstance(node, list):
        return [_as_30(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _as_30(value) for key, value in node.items()}
    kind = out.get("type")
    if isinstance(kind, list):
        others = [name for name in kind if name != "null"]
        if len(others) == 1:
            out["type"] = others[0]
        else:
            del out["type"]
        if len(others) < len(kind):
            out["nullable"] = True
    for key in ("anyOf", "oneOf"):
        members = out.get(key)
        if isinstance(members, list) and {"type": "null"} in members:
            out[key] = [member for member in members if member != {"type": "null"}]
            out["nullable"] = True
    if "const" in out:
        out["enum"] = [out.pop("const")]
    if isinstance(out.get("examples"), list):
        out["example"] = out.pop("examples")[0]
    if "contentMediaType" in out:
        del out["contentMediaType"]
        out["format"] = "binary"
    return out


# --- handlers -----------------------------------------------------------------------------------


async def index(request: Request, state: GatewayState) -> Response:
    return Response(200, index_body())


async def openapi_json(request: Request, state: GatewayState) -> Response:
    return Response(200, openapi.openapi_document())


async def docs(request: Request, state: GatewayState) -> Response:
    return Response(200, docs_page(), content_type=b"text/html; charset=utf-8")


async def asset(request: Request, state: GatewayState) -> Response:
    name = request.path_params["file"]
    found = docs_asset(name)
    if found is None:
        raise EndpointNotFound(f"No docs asset {name!r}.")
    body, content_type = found
    return Response(200, body, content_type=content_type, headers=list(_CACHED))
