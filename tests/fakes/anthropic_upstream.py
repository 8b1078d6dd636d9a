"""Fake Anthropic upstream: the Messages API (`POST /v1/messages`) and `GET /v1/models`.

Replies come from `tests.fakes.echo`; see `tests.fakes.server` for recording and faults.
Like the real API it requires an `anthropic-version` header (400 without one).
Run standalone with `python -m tests.fakes.anthropic_upstream --port P`.
"""

from __future__ import annotations

import uuid
from typing import Any

from aiohttp import web

from tests.fakes.echo import Reply, echo, last_text, prompt_tokens
from tests.fakes.server import (
    Exchange,
    FakeUpstream,
    Route,
    bearer_token,
    main,
    problem_with,
    sse_event,
)

MODEL_CREATED_AT = "2025-01-01T00:00:00Z"
START_OUTPUT_TOKENS = 1  # message_start's usage.output_tokens, as the real API sends

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}


class FakeAnthropic(FakeUpstream):
    """`base_url` is the root `http://127.0.0.1:PORT`, for `anthropic.Anthropic(base_url=)`."""

    api_prefix = ""
    default_models = ("claude-sonnet-4-5", "claude-haiku-4-5")
    auth_error_message = "invalid x-api-key"

    def routes(self) -> list[Route]:
        return [("POST", "/v1/messages", self._messages), ("GET", "/v1/models", self._models)]

    def error_body(
        self, status: int, message: str, error_type: str | None, code: str | None
    ) -> dict[str, Any]:
        default_type = "api_error" if status >= 500 else "invalid_request_error"
        return {
            "type": "error",
            "error": {
                "type": error_type or _ERROR_TYPES.get(status, default_type),
                "message": message,
            },
            "request_id": f"req_{uuid.uuid4().hex[:24]}",
        }

    def presented_key(self, request: web.Request) -> str | None:
        """`x-api-key`, else `Authorization: Bearer` (what anthropic SDK 2.x sends)."""
        return request.headers.get("x-api-key") or bearer_token(request)

    def reject(self, exchange: Exchange) -> web.StreamResponse | None:
        refusal = super().reject(exchange)
        if refusal is None and "anthropic-version" not in exchange.request.headers:
            return self.error_response(400, "anthropic-version: header is required")
        return refusal

    async def _messages(self, exchange: Exchange) -> web.StreamResponse:
        body = exchange.body
        if problem := problem_with(body, {"model": str, "max_tokens": int, "messages": list}):
            return self.error_response(400, problem)
        messages = body["messages"]
        reply = echo(last_text(messages), body["max_tokens"])
        input_tokens = (
            prompt_tokens(messages, extra=[body.get("system")]) if exchange.with_usage else None
        )
        head = {
            "id": f"msg_{uuid.uuid4().hex[:24]}",
            "type": "message",
            "role": "assistant",
            "model": body["model"],
        }
        if exchange.stream:
            return await self.send_events(exchange, _message_events(head, reply, input_tokens))
        message = {
            **head,
            "content": [{"type": "text", "text": reply.text}],
            **_stop(reply, final=True),
        }
        if input_tokens is not None:
            message["usage"] = {"input_tokens": input_tokens, "output_tokens": reply.tokens}
        return await self.send_json(exchange, message)

    async def _models(self, exchange: Exchange) -> web.StreamResponse:
        data = [
            {"type": "model", "id": model, "display_name": model, "created_at": MODEL_CREATED_AT}
            for model in self.models
        ]
        first, last = (data[0]["id"], data[-1]["id"]) if data else (None, None)
        return await self.send_json(
            exchange, {"data": data, "has_more": False, "first_id": first, "last_id": last}
        )


def _stop(reply: Reply, *, final: bool) -> dict[str, Any]:
    stop_reason = ("max_tokens" if reply.truncated else "end_turn") if final else None
    return {"stop_reason": stop_reason, "stop_sequence": None}


def _message_events(head: dict[str, Any], reply: Reply, input_tokens: int | None) -> list[bytes]:
    """The real event sequence; without usage (`no_usage` fault) the usage fields are left out."""
    start = {**head, "content": [], **_stop(reply, final=False)}
    delta: dict[str, Any] = {"type": "message_delta", "delta": _stop(reply, final=True)}
    if input_tokens is not None:
        start["usage"] = {"input_tokens": input_tokens, "output_tokens": START_OUTPUT_TOKENS}
        delta["usage"] = {"output_tokens": reply.tokens}
    return [
        sse_event("message_start", {"type": "message_start", "message": start}),
        sse_event(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        ),
        sse_event("ping", {"type": "ping"}),
        *(
            sse_event(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": piece},
                },
            )
            for piece in reply.pieces
        ),
        sse_event("content_block_stop", {"type": "content_block_stop", "index": 0}),
        sse_event("message_delta", delta),
        sse_event("message_stop", {"type": "message_stop"}),
    ]


if __name__ == "__main__":
    main(FakeAnthropic)
