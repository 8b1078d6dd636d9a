"""Matches a request path to a `Route` with a dict lookup (exact paths) or a few segment matches."""

from __future__ import annotations

from collections.abc import Iterable

from gateway.routes import AnyRoute


class Router:
    def __init__(self, routes: Iterable[AnyRoute]) -> None:
        self._exact: dict[str, AnyRoute] = {}
        self._patterns: list[tuple[list[str], AnyRoute]] = []
        for route in routes:
            if "{" in route.path:
                self._patterns.append((route.path.strip("/").split("/"), route))
            else:
                self._exact[route.path] = route

    def match(self, path: str) -> tuple[AnyRoute, dict[str, str]] | None:
        route = self._exact.get(path)
        if route is not None:
            return route, {}
        segments = path.strip("/").split("/")
        for template, route in self._patterns:
            if len(template) != len(segments):
                continue
            params: dict[str, str] = {}
            for expected, actual in zip(template, segments, strict=True):
                if expected.startswith("{"):
                    if not actual:
                        break
                    params[expected[1:-1]] = actual
                elif expected != actual:
                    break
            else:
                return route, params
        return None
