"""Anthropic's Messages format ↔ OpenAI's chat format, for `POST /v1/messages`.

Why our own and not litellm's adapter: importing litellm costs ~5 s of start-up, its adapter is
internal API that changes from release to release, and the mapping for text, images, tools and
streaming is small and fully covered by tests with the real `anthropic` SDK.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import orjson

from gateway.errors import BadRequest, UpstreamError
from gateway.llm.sse import event_data

_STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}


# --- request --------------------------------------------------------------------------------------


def to_openai_request(body: dict[str, Any]) -> dict[str, Any]:
    """An Anthropic Messages request as an OpenAI chat request (the model stays the endpoint)."""
    max_tokens = body.get("max_tokens")
    if type(max_tokens) is not int or max_tokens < 1:
        raise BadRequest("'max_tokens' is required and must be a positive integer.")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' is required and must be a non-empty list.")
    out: list[dict[str, Any]] = []
    system = body.get("system")
    if isinstance(system, str) and system:
        out.append({"role": "system", "content": system})
    elif isinstance(system, list):
        out.append({"role": "system", "content": _joined_text(system, "system")})
    elif system is not None and not isinstance(system, str):
        raise BadRequest("'system' must be a string or a list of text blocks.")
    for message in messages:
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            raise BadRequest("Each message needs a role of 'user' or 'assistant'.")
        out += _message_to_openai(message)
    request: dict[str, Any] = {
        "model": body.get("model"),
        "messages": out,
        "max_tokens": body["max_tokens"],
    }
    for name in ("temperature", "top_p"):
        if name in body:
            value = body[name]
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise BadRequest(f"'{name}' must be a number.")
            request[name] = value
    if "stop_sequences" in body:
        stops = body["stop_sequences"]
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise BadRequest("'stop_sequences' must be a list of strings.")
        request["stop"] = stops
    if body.get("stream") is True:
        request["stream"] = True
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise BadRequest("'tools' must be a list.")
        request["tools"] = [_tool_to_openai(tool) for tool in tools]
    choice = body.get("tool_choice")
    if choice is not None and not isinstance(choice, dict):
        raise BadRequest("'tool_choice' must be an object.")
    if isinstance(choice, dict):
        kind = choice.get("type")
        if kind == "tool":
            name = _typed(choice, "name", str, "tool_choice")
            request["tool_choice"] = {"type": "function", "function": {"name": name}}
        elif kind in ("auto", "none"):
            request["tool_choice"] = kind
        elif kind == "any":
            request["tool_choice"] = "required"
    return request


def _tool_to_openai(tool: Any) -> dict[str, Any]:
    if not isinstance(tool, dict):
        raise BadRequest("Each tool must be an object.")
    description = tool.get("description", "")
    if not isinstance(description, str):
        raise BadRequest("A tool's 'description' must be a string.")
    schema = tool.get("input_schema", {"type": "object"})
    if not isinstance(schema, dict):
        raise BadRequest("A tool's 'input_schema' must be an object.")
    return {
        "type": "function",
        "function": {
            "name": _typed(tool, "name", str, "tool"),
            "description": description,
            "parameters": schema,
        },
    }


def _typed(block: dict[str, Any], name: str, kind: type, where: str) -> Any:
    """`block[name]` if it has the type the Messages API gives it, else a 400 that says so."""
    value = block.get(name)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise BadRequest(f"A {where}'s '{name}' must be a {_TYPE_NAMES[kind]}.")
    return value


_TYPE_NAMES: dict[type, str] = {str: "string", dict: "object", list: "list"}


def _message_to_openai(message: dict[str, Any]) -> list[dict[str, Any]]:
    role, content = message["role"], message.get("content")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise BadRequest("A message's content must be a string or a list of blocks.")
    parts: list[dict[str, Any]] = []
    tool_calls: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    for block in content:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            parts.append({"type": "text", "text": _typed(block, "text", str, "text block")})
        elif kind == "image":
            parts.append({"type": "image_url", "image_url": {"url": _image_url(block)}})
        elif kind == "tool_use":
            arguments = orjson.dumps(block.get("input", {})).decode()
            tool_calls.append(
                {
                    "id": _typed(block, "id", str, "tool_use block"),
                    "type": "function",
                    "function": {
                        "name": _typed(block, "name", str, "tool_use block"),
                        "arguments": arguments,
                    },
                }
            )
        elif kind == "tool_result":
            result = block.get("content", "")
            if isinstance(result, str):
                text = result
            elif isinstance(result, list):
                text = _joined_text(result, "tool_result block")
            else:
                raise BadRequest("A tool_result block's 'content' must be a string or a list.")
            tool_use_id = _typed(block, "tool_use_id", str, "tool_result block")
            results.append({"role": "tool", "tool_call_id": tool_use_id, "content": text})
        else:
            raise BadRequest(f"Unsupported content block type {kind!r}.")
    out: list[dict[str, Any]] = list(results)
    if parts or tool_calls:
        only_text = all(p["type"] == "text" for p in parts)
        converted: dict[str, Any] = {
            "role": role,
            "content": "".join(p["text"] for p in parts) if only_text else parts,
        }
        if tool_calls:
            converted["tool_calls"] = tool_calls
        out.append(converted)
    return out


def _image_url(block: dict[str, Any]) -> str:
    source = _typed(block, "source", dict, "image block")
    if source.get("type") == "url" or "url" in source:
        url: str = _typed(source, "url", str, "image source")
        return url
    media_type = _typed(source, "media_type", str, "image source")
    data = _typed(source, "data", str, "image source")
    return f"data:{media_type};base64,{data}"


def _joined_text(blocks: list[Any], where: str) -> str:
    """The text of a list of text blocks (other kinds of block are left out)."""
    texts = []
    for block in blocks:
        if not isinstance(block, dict):
            raise BadRequest(f"Each block of a {where} must be an object.")
        if block.get("type") == "text":
            texts.append(_typed(block, "text", str, "text block"))
    return "".join(texts)


# --- response -------------------------------------------------------------------------------------


def to_anthropic_response(completion: dict[str, Any], model: str) -> dict[str, Any]:
    choice = (completion.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    if message.get("content"):
        content.append({"type": "text", "text": message["content"]})
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {}
        try:
            arguments = orjson.loads(function.get("arguments") or "{}")
        except orjson.JSONDecodeError:
            arguments = {}
        content.append(
            {
                "type": "tool_use",
                "id": call.get("id"),
                "name": function.get("name"),
                "input": arguments,
            }
        )
    usage = completion.get("usage") or {}
    return {
        "id": _message_id(completion),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": _STOP_REASONS.get(choice.get("finish_reason") or "stop", "end_turn"),
        "stop_sequence": None,
        "usage": {
            "input_tokens": usage.get("prompt_tokens", 0),
            "output_tokens": usage.get("completion_tokens", 0),
        },
    }


def _message_id(completion: dict[str, Any]) -> str:
    upstream = str(completion.get("id") or int(time.time() * 1000))
    return upstream if upstream.startswith("msg_") else f"msg_{upstream}"


# --- streaming ------------------------------------------------------------------------------------


def _sse(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps({"type": name, **data}) + b"\n\n"


async def to_anthropic_events(
    openai_events: AsyncIterator[bytes], model: str
) -> AsyncIterator[bytes]:
    """OpenAI chat chunk events → Anthropic's message stream events (text and tool calls)."""
    try:
        async for event in _anthropic_events(openai_events, model):
            yield event
    finally:
        # Stopping early (after an error event) must still end the source now, not whenever it
        # is garbage-collected: its `finally` closes the upstream stream and meters the call.
        closer = getattr(openai_events, "aclose", None)
        if closer is not None:
            await closer()


async def _anthropic_events(
    openai_events: AsyncIterator[bytes], model: str
) -> AsyncIterator[bytes]:
    started = False
    block: tuple[str, int] | None = None  # ("text" | tool call index, anthropic block index)
    next_index = 0
    finish = "stop"
    usage = {"input_tokens": 0, "output_tokens": 0}
    async for event in openai_events:
        data = event_data(event)
        if data is None or data == b"[DONE]":
            continue
        chunk = orjson.loads(data)
        if "error" in chunk and "choices" not in chunk:  # the upstream's own mid-stream error
            error = chunk["error"]
            message = error.get("message", "") if isinstance(error, dict) else str(error)
            raise UpstreamError(f"The upstream failed mid-stream: {message}")
        if not started:
            started = True
            yield _sse(
                "message_start",
                {
                    "message": {
                        "id": _message_id(chunk),
                        "type": "message",
                        "role": "assistant",
                        "model": model,
                        "content": [],
                        "stop_reason": None,
                        "stop_sequence": None,
                        "usage": {"input_tokens": 0, "output_tokens": 0},
                    }
                },
            )
        if isinstance(chunk.get("usage"), dict):
            usage = {
                "input_tokens": chunk["usage"].get("prompt_tokens", 0),
                "output_tokens": chunk["usage"].get("completion_tokens", 0),
            }
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            if choice.get("finish_reason"):
                finish = choice["finish_reason"]
            if delta.get("content"):
                if block is None or block[0] != "text":
                    if block is not None:
                        yield _sse("content_block_stop", {"index": block[1]})
                    block = ("text", next_index)
                    next_index += 1
                    yield _sse(
                        "content_block_start",
                        {"index": block[1], "content_block": {"type": "text", "text": ""}},
                    )
                yield _sse(
                    "content_block_delta",
                    {"index": block[1], "delta": {"type": "text_delta", "text": delta["content"]}},
                )
            for call in delta.get("tool_calls") or ():
                key = f"tool{call.get('index', 0)}"
                function = call.get("function") or {}
                if block is None or block[0] != key:
                    if block is not None:
                        yield _sse("content_block_stop", {"index": block[1]})
                    block = (key, next_index)
                    next_index += 1
                    yield _sse(
                        "content_block_start",
                        {
                            "index": block[1],
                            "content_block": {
                                "type": "tool_use",
                                "id": call.get("id"),
                                "name": function.get("name"),
                                "input": {},
                            },
                        },
                    )
                if function.get("arguments"):
                    yield _sse(
                        "content_block_delta",
                        {
                            "index": block[1],
                            "delta": {
                                "type": "input_json_delta",
                                "partial_json": function["arguments"],
                            },
                        },
                    )
    if block is not None:
        yield _sse("content_block_stop", {"index": block[1]})
    yield _sse(
        "message_delta",
        {
            "delta": {"stop_reason": _STOP_REASONS.get(finish, "end_turn"), "stop_sequence": None},
            "usage": usage,
        },
    )
    yield _sse("message_stop", {})
