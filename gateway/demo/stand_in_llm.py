"""A stand-in for vLLM, for the demo only: no model runs here.

A small OpenAI-compatible server (`/v1/chat/completions`, `/v1/completions`, `/v1/embeddings`,
`/v1/models`) with canned, deterministic answers, so the demo's LLM endpoints can be called on a
machine without a GPU. It speaks the real wire format: JSON bodies with `usage`, streams as
server-sent events (one chunk per word, then the usage chunk when
`stream_options.include_usage` asks for it, then `data: [DONE]`), embeddings as floats or
base64. Tokens are whitespace-separated words.

`python -m gateway.demo serve` runs it in a thread beside the gateway; alone:
`python -m gateway.demo.stand_in_llm --port 8081`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import struct
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from aiohttp import web

MODELS = ("meta-llama/Llama-3.1-70B-Instruct", "intfloat/e5-large-v2")
EMBEDDING_DIMENSIONS = 16
Body = dict[str, Any]


def answer_to(prompt: str) -> str:
    """The stand-in's whole "model": one canned sentence quoting the prompt."""
    quoted = " ".join(prompt.split()) or "(nothing)"
    return f"Hello from the demo's stand-in for vLLM. You said: {quoted}"


def embedding_of(text: str, dimensions: int = EMBEDDING_DIMENSIONS) -> list[float]:
    """A deterministic vector (multiples of 1/128 in [-1, 1)) from the text's SHA-256."""
    digest = b""
    while len(digest) < dimensions:
        digest += hashlib.sha256(f"{len(digest)}:{text}".encode()).digest()
    return [(byte - 128) / 128 for byte in digest[:dimensions]]


def text_of(content: Any) -> str:
    """A message's text: a string, or the text parts of a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def _tokens(text: str) -> int:
    return len(text.split())


def _completion(prompt: str, body: Body) -> tuple[list[str], str]:
    """The answer's words (cut at the request's token limit) and its finish reason."""
    words = answer_to(prompt).split()
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    if isinstance(limit, int) and 0 <= limit < len(words):
        return words[:limit], "length"
    return words, "stop"


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _error(status: int, message: str) -> web.Response:
    error = {"message": message, "type": "invalid_request_error", "param": None, "code": None}
    return web.json_response({"error": error}, status=status)


async def _read(request: web.Request, *required: str) -> Body | web.Response:
    try:
        body = await request.json()
    except ValueError:
        return _error(400, "The request body is not valid JSON.")
    if not isinstance(body, dict):
        return _error(400, "The request body must be a JSON object.")
    for name in ("model", *required):
        if not body.get(name):
            return _error(400, f"{name}: Field required")
    return body


def _head(prefix: str, kind: str, body: Body) -> Body:
    created = int(time.time())
    return {
        "id": f"{prefix}-{uuid.uuid4().hex[:24]}",
        "object": kind,
        "created": created,
        "model": body["model"],
    }


async def _stream(
    request: web.Request, head: Body, choices: list[Body], usage: dict[str, int], body: Body
) -> web.StreamResponse:
    """One event per choice delta; the usage chunk if asked for; `[DONE]`."""
    response = web.StreamResponse(headers={"content-type": "text/event-stream"})
    await response.prepare(request)
    options = body.get("stream_options")
    with_usage = isinstance(options, dict) and options.get("include_usage") is True
    extra: Body = {"usage": None} if with_usage else {}
    for choice in choices:
        await response.write(_event({**head, "choices": [choice], **extra}))
    if with_usage:
        await response.write(_event({**head, "choices": [], "usage": usage}))
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


def _event(payload: Body) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def _pieces(words: list[str]) -> list[str]:
    """Streamed deltas, one per word; they concatenate to the answer."""
    return [word if index == 0 else f" {word}" for index, word in enumerate(words)]


async def chat_completions(request: web.Request) -> web.StreamResponse:
    body = await _read(request, "messages")
    if isinstance(body, web.Response):
        return body
    messages = [m for m in body["messages"] if isinstance(m, dict)]
    prompt_tokens = sum(_tokens(text_of(m.get("content"))) + 3 for m in messages)
    words, finish = _completion(text_of(messages[-1].get("content")) if messages else "", body)
    n: int = body["n"] if isinstance(body.get("n"), int) and body["n"] > 0 else 1
    usage = _usage(prompt_tokens, len(words) * n)
    if body.get("stream"):
        deltas: list[Body] = [
            {"role": "assistant", "content": piece} if i == 0 else {"content": piece}
            for i, piece in enumerate(_pieces(words))
        ]
        chunks: list[Body] = [
            {"index": index, "delta": delta, "logprobs": None, "finish_reason": None}
            for index in range(n)
            for delta in deltas
        ]
        chunks += [
            {"index": index, "delta": {}, "logprobs": None, "finish_reason": finish}
            for index in range(n)
        ]
        head = _head("chatcmpl", "chat.completion.chunk", body)
        return await _stream(request, head, chunks, usage, body)
    message = {"role": "assistant", "content": " ".join(words), "refusal": None}
    choices = [
        {"index": index, "message": message, "logprobs": None, "finish_reason": finish}
        for index in range(n)
    ]
    head = _head("chatcmpl", "chat.completion", body)
    return web.json_response({**head, "choices": choices, "usage": usage})


async def completions(request: web.Request) -> web.StreamResponse:
    body = await _read(request, "prompt")
    if isinstance(body, web.Response):
        return body
    prompts = _texts(body["prompt"])
    answers = [_completion(prompt, body) for prompt in prompts]
    usage = _usage(sum(map(_tokens, prompts)), sum(len(words) for words, _ in answers))
    head = _head("cmpl", "text_completion", body)
    if body.get("stream"):
        chunks: list[Body] = [
            {"text": piece, "index": index, "logprobs": None, "finish_reason": None}
            for index, (words, _) in enumerate(answers)
            for piece in _pieces(words)
        ]
        chunks += [
            {"text": "", "index": index, "logprobs": None, "finish_reason": finish}
            for index, (_, finish) in enumerate(answers)
        ]
        return await _stream(request, head, chunks, usage, body)
    choices = [
        {"text": " ".join(words), "index": index, "logprobs": None, "finish_reason": finish}
        for index, (words, finish) in enumerate(answers)
    ]
    return web.json_response({**head, "choices": choices, "usage": usage})


async def embeddings(request: web.Request) -> web.StreamResponse:
    body = await _read(request, "input")
    if isinstance(body, web.Response):
        return body
    dimensions = body.get("dimensions") or EMBEDDING_DIMENSIONS
    encoding = body.get("encoding_format") or "float"
    if not isinstance(dimensions, int) or dimensions < 1 or encoding not in ("float", "base64"):
        return _error(400, "dimensions or encoding_format: Invalid value")
    texts = _texts(body["input"])
    data = []
    for index, text in enumerate(texts):
        vector = embedding_of(text, dimensions)
        encoded: list[float] | str = vector
        if encoding == "base64":
            encoded = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        data.append({"object": "embedding", "index": index, "embedding": encoded})
    tokens = sum(map(_tokens, texts))
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return web.json_response(
        {"object": "list", "data": data, "model": body["model"], "usage": usage}
    )


async def models(request: web.Request) -> web.StreamResponse:
    data = [{"id": m, "object": "model", "created": 0, "owned_by": "demo"} for m in MODELS]
    return web.json_response({"object": "list", "data": data})


def _texts(value: Any) -> list[str]:
    """A prompt or embeddings input: a string or a list of strings (or of token ids)."""
    if isinstance(value, list):
        return [item if isinstance(item, str) else json.dumps(item) for item in value]
    return [str(value)]


def application() -> web.Application:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_get("/v1/models", models)
    return app


@contextmanager
def serving_in_thread(host: str, port: int) -> Iterator[str]:
    """Serve on `host:port` from a thread of this process (with its own event loop) until the
    block ends; yields the base URL. A busy port raises `OSError` before the block starts."""
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(application(), access_log=None)
    try:
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, host, port).start())
    except BaseException:
        loop.run_until_complete(runner.cleanup())
        loop.close()
        raise
    thread = threading.Thread(target=loop.run_forever, name="stand-in-llm", daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{port}/v1"
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m gateway.demo.stand_in_llm",
        description="The demo's stand-in for vLLM: canned OpenAI-compatible answers, no model.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    parser.add_argument("--port", type=int, default=8081, help="port to bind (8081)")
    args = parser.parse_args(argv)
    print(f"stand-in for vLLM (canned answers, no model) on http://{args.host}:{args.port}/v1")
    web.run_app(application(), host=args.host, port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
