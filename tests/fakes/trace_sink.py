"""Fake MLflow trace ingestion: `POST /v1/traces` (OTLP/HTTP JSON), as a tracking server has it.

It takes every batch (or the fault injected for it) and keeps nothing but the recorded requests;
the real ingestion is tested against `mlflow server` (tests/test_tracing.py). The benchmark runs
it as its own process (`python -m tests.fakes.trace_sink --port P`) to measure what tracing
costs the gateway, apart from what a tracking server costs itself.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from tests.fakes.server import Exchange, FakeUpstream, Route, bearer_token, main


class FakeTraceSink(FakeUpstream):
    def routes(self) -> list[Route]:
        return [("POST", "/v1/traces", self._traces), ("GET", "/health", self._health)]

    def error_body(
        self, status: int, message: str, error_type: str | None, code: str | None
    ) -> dict[str, Any]:
        return {"detail": message}  # FastAPI's shape, which MLflow's OTLP route answers in

    def presented_key(self, request: web.Request) -> str | None:
        return bearer_token(request)

    def spans_received(self) -> int:
        return sum(
            len(scope["spans"])
            for request in self.requests
            for resource in request.body["resourceSpans"]
            for scope in resource["scopeSpans"]
        )

    async def _traces(self, exchange: Exchange) -> web.StreamResponse:
        return await self.send_json(exchange, {})

    async def _health(self, exchange: Exchange) -> web.StreamResponse:
        return await self.send_json(exchange, {})  # `mlflow server` has it too


if __name__ == "__main__":
    main(FakeTraceSink)
