"""Fake OpenAI upstream: `/v1/chat/completions`, `/v1/completions`, `/v1/embeddings`, `/v1/models`.

Replies come from `tests.fakes.echo`; see `tests.fakes.server` for recording and faults.
Run standalone with `python -m tests.fakes.openai_upstream --port P`.
"""

from __future__ import annotations

import base64
import hashlib
import struct
import time
import uuid
from typing import Any

from aiohttp import web

from tests.fakes.echo import (
    Reply,
    count_words,
    echo,
    last_text,
    prompt_tokens,
    text_of,
    token_limit,
)
from tests.fakes.server import (
    SSE_DONE,
    Exchange,
    FakeUpstream,
    Route,
    bearer_token,
    main,
    problem_with,
    sse_data,
)

EMBEDDING_DIMENSIONS = 8
MODEL_CREATED = 1_700_000_000

_ERROR_TYPES = {429: "requests"}  # else server_error for 5xx, invalid_request_error for 4xx
_ERROR_CODES = {401: "invalid_api_key", 404: "unknown_url", 429: "rate_limit_exceeded"}

Usage = dict[str, int]


def embedding_for(text: str, dimensions: int = EMBEDDING_DIMENSIONS) -> list[float]:
    """The fake's embedding of `text`: multiples of 1/128 in [-1, 1), exact in float32/base64."""
    digest = b""
    while len(digest) < dimensions:
        digest += hashlib.sha256(f"{len(digest)}:{text}".encode()).digest()
    return [(byte - 128) / 128 for byte in digest[:dimensions]]


class FakeOpenAI(FakeUpstream):
    """`base_url` is `http://127.0.0.1:PORT/v1`, as `openai.OpenAI(base_url=...)` expects."""

    api_prefix = "/v1"
    default_models = ("gpt-4o-mini", "gpt-4o", "gpt-3.5-turbo-instruct", "text-embedding-3-small")
    auth_error_message = "Incorrect API key provided."

    def routes(self) -> list[Route]:
        return [
            ("POST", "/v1/chat/completions", self._chat_completions),
            ("POST", "/v1/completions", self._completions),
            ("POST", "/v1/embeddings", self._embeddings),
            ("GET", "/v1/models", self._models),
        ]

    def error_body(
        self, status: int, message: str, error_type: str | None, code: str | None
    ) -> dict[str, Any]:
        default_type = "server_error" if status >= 500 else "invalid_request_error"
        return {
            "error": {
                "message": message,
                "type": error_type or _ERROR_TYPES.get(status, default_type),
                "param": None,
                "code": code if code is not None else _ERROR_CODES.get(status),
            }
        }

    def presented_key(self, request: web.Request) -> str | None:
        return bearer_token(request)

    async def _chat_completions(self, exchange: Exchange) -> web.StreamResponse:
        body = exchange.body
        if problem := problem_with(body, {"model": str, "messages": list}):
            return self.error_response(400, problem)
        messages = body["messages"]
        reply = echo(last_text(messages), token_limit(body, "max_completion_tokens", "max_tokens"))
        choices = (
            body.get("n") if isinstance(body.get("n"), int) else 1
        )  # n answers, n times the tokens
        usage = (
            _usage(prompt_tokens(messages), reply.tokens * choices) if exchange.with_usage else None
        )
        if exchange.stream:
            head = _head("chatcmpl", "chat.completion.chunk", body)
            return await self.send_events(exchange, _events(head, _chat_chunks(reply), usage, body))
        message = {"role": "assistant", "content": reply.text, "refusal": None}
        answers = [
            {"index": i, "message": message, "logprobs": None, "finish_reason": _finish(reply)}
            for i in range(choices)
        ]
        head = _head("chatcmpl", "chat.completion", body)
        return await self.send_json(exchange, _with_usage({**head, "choices": answers}, usage))

    async def _completions(self, exchange: Exchange) -> web.StreamResponse:
        body = exchange.body
        if problem := problem_with(body, {"model": str, "prompt": (str, list)}):
            return self.error_response(400, problem)
        prompts = _texts(body["prompt"])
        limit = token_limit(body, "max_tokens")
        replies = [echo(prompt, limit) for prompt in prompts]
        tokens = sum(count_words(prompt) for prompt in prompts)
        usage = (
            _usage(tokens, sum(reply.tokens for reply in replies)) if exchange.with_usage else None
        )
        head = _head("cmpl", "text_completion", body)
        if exchange.stream:
            return await self.send_events(
                exchange, _events(head, _text_chunks(replies), usage, body)
            )
        choices = [
            _text_choice(index, reply.text, _finish(reply)) for index, reply in enumerate(replies)
        ]
        return await self.send_json(exchange, _with_usage({**head, "choices": choices}, usage))

    async def _embeddings(self, exchange: Exchange) -> web.StreamResponse:
        body = exchange.body
        if problem := problem_with(body, {"model": str, "input": (str, list)}):
            return self.error_response(400, problem)
        dimensions = body.get("dimensions") or EMBEDDING_DIMENSIONS
        encoding = body.get("encoding_format") or "float"
        if not isinstance(dimensions, int) or dimensions < 1 or encoding not in ("float", "base64"):
            return self.error_response(400, "dimensions or encoding_format: Invalid value")
        texts = _texts(body["input"])
        data = [
            {
                "object": "embedding",
                "index": index,
                "embedding": _encoded(embedding_for(text, dimensions), encoding),
            }
            for index, text in enumerate(texts)
        ]
        tokens = sum(count_words(text) for text in texts)
        usage = {"prompt_tokens": tokens, "total_tokens": tokens} if exchange.with_usage else None
        return await self.send_json(
            exchange, _with_usage({"object": "list", "data": data, "model": body["model"]}, usage)
        )

    async def _models(self, exchange: Exchange) -> web.StreamResponse:
        data = [
            {"id": model, "object": "model", "created": MODEL_CREATED, "owned_by": "openai"}
            for model in self.models
        ]
        return await self.send_json(exchange, {"object": "list", "data": data})


def _head(prefix: str, kind: str, body: dict[str, Any]) -> dict[str, Any]:
    """The fields every (chunk) object starts with."""
    return {
        "id": f"{prefix}-{uuid.uuid4().hex[:24]}",
        "object": kind,
        "created": int(time.time()),
        "model": body["model"],
    }


def _usage(prompt: int, completion: int) -> Usage:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _with_usage(payload: dict[str, Any], usage: dict[str, int] | None) -> dict[str, Any]:
    return payload if usage is None else {**payload, "usage": usage}


def _finish(reply: Reply) -> str:
    return "length" if reply.truncated else "stop"


def _texts(value: str | list[Any]) -> list[str]:
    """A prompt/input: a string, or a list of strings (anything else in the list is stringified)."""
    if isinstance(value, str):
        return [value]
    return [item if isinstance(item, str) else text_of(item) or str(item) for item in value]


def _encoded(vector: list[float], encoding: str) -> list[float] | str:
    if encoding == "float":
        return vector
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def _include_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def _chat_chunks(reply: Reply) -> list[list[dict[str, Any]]]:
    """The `choices` of each streamed chunk: one per word (the first with the role), the finish."""
    pieces = reply.pieces or [""]
    deltas = [
        {"role": "assistant", "content": pieces[0]},
        *({"content": piece} for piece in pieces[1:]),
    ]
    finish = {"index": 0, "delta": {}, "logprobs": None, "finish_reason": _finish(reply)}
    chunks: list[list[dict[str, Any]]] = [
        [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}] for delta in deltas
    ]
    return [*chunks, [finish]]


def _text_choice(index: int, text: str, finish_reason: str | None) -> dict[str, Any]:
    return {"text": text, "index": index, "logprobs": None, "finish_reason": finish_reason}


def _text_chunks(replies: list[Reply]) -> list[list[dict[str, Any]]]:
    chunks = [
        [_text_choice(index, piece, None)]
        for index, reply in enumerate(replies)
        for piece in reply.pieces
    ]
    chunks += [[_text_choice(index, "", _finish(reply))] for index, reply in enumerate(replies)]
    return chunks


def _events(
    head: dict[str, Any],
    chunks: list[list[dict[str, Any]]],
    usage: Usage | None,
    body: dict[str, Any],
) -> list[bytes]:
    """SSE events: a chunk per `choices`, the usage chunk if asked (and not suppressed), DONE."""
    include_usage = _include_usage(body)
    extra: dict[str, Any] = {"usage": None} if include_usage else {}
    payloads = [{**head, "choices": choices, **extra} for choices in chunks]
    if include_usage and usage is not None:
        payloads.append({**head, "choices": [], "usage": usage})
    return [*map(sse_data, payloads), SSE_DONE]


if __name__ == "__main__":
    main(FakeOpenAI)
