"""What an LLM call may use at most: reserved against token limits and budgets before it runs,
and settled to what it really used when it ends.

The bound must hold for every request shape, or concurrent calls could be admitted past a limit
on the strength of usage nobody reserved: the prompt's text (messages, tool and function
definitions, structured-output schemas) counted with the tokenizer, token-array prompts by their
length, images and other non-text parts at a fixed bound each, and the completion as
`max_tokens` (or `limits.default_max_tokens`) times every choice asked for (`n`, `best_of`, one
per prompt of a batched completion).
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from gateway.llm.types import LLMRequest
from gateway.metering.tokens import count_tokens, tokenizer_loaded
from gateway.metering.usage import Price, TokenUsage

# OpenAI's largest high-detail image costs 1,105 tokens (85 + 170 per 512-px tile, six tiles);
# other providers charge less. Audio and file parts get the same bound.
NON_TEXT_PART_TOKENS = 1_600
MESSAGE_OVERHEAD_TOKENS = 4  # role and separators, per message
# Counting short prompts inline is cheaper than a thread hop; long ones go off the event loop.
INLINE_COUNT_CHARS = 2_048


async def worst_case(
    request: LLMRequest, price: Price | None, default_max_tokens: int
) -> tuple[int, float]:
    """(tokens, USD) the call may use at most."""
    texts, fixed = prompt_parts(request)
    if tokenizer_loaded() and sum(len(text) for text in texts) <= INLINE_COUNT_CHARS:
        counted = count_tokens(texts)
    else:
        counted = await asyncio.to_thread(count_tokens, texts)
    prompt = fixed + counted
    completion = completion_bound(request, default_max_tokens)
    cost = price.cost(TokenUsage(prompt, completion)) if price is not None else 0.0
    return prompt + completion, cost


def prompt_parts(request: LLMRequest) -> tuple[list[str], int]:
    """The prompt's texts to count, and the tokens known without counting (token arrays,
    non-text parts, per-message overhead)."""
    body = request.body
    texts: list[str] = []
    fixed = 0
    if request.task == "chat":
        for message in body.get("messages") or ():
            fixed += MESSAGE_OVERHEAD_TOKENS
            if isinstance(message, dict):
                fixed += _message_parts(message, texts)
        for name in ("tools", "functions", "response_format", "tool_choice"):
            if body.get(name) is not None:
                texts.append(orjson.dumps(body[name]).decode())
        return texts, fixed
    prompts = body.get("prompt" if request.task == "completions" else "input")
    for prompt in _prompts(prompts):
        if isinstance(prompt, str):
            texts.append(prompt)
        else:
            fixed += len(prompt)  # already tokens
    return texts, fixed


def completion_bound(request: LLMRequest, default_max_tokens: int) -> int:
    if request.task == "embeddings":
        return 0
    body = request.body
    per_choice = body.get("max_completion_tokens") or body.get("max_tokens") or default_max_tokens
    choices = _count(body.get("n"))
    if request.task == "completions":
        choices = max(choices, _count(body.get("best_of"))) * max(
            1, len(_prompts(body.get("prompt")))
        )
    return int(per_choice) * choices


def _message_parts(message: dict[str, Any], texts: list[str]) -> int:
    fixed = 0
    content = message.get("content")
    if isinstance(content, str):
        texts.append(content)
    elif isinstance(content, list):
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif isinstance(part, str):
                texts.append(part)
            else:
                fixed += NON_TEXT_PART_TOKENS
    elif content is not None:
        texts.append(orjson.dumps(content).decode())
    for field in ("tool_calls", "function_call", "name"):
        value = message.get(field)
        if value is not None:
            texts.append(value if isinstance(value, str) else orjson.dumps(value).decode())
    return fixed


def _prompts(field: Any) -> list[str | list[Any]]:
    """A completions prompt or embeddings input as a list of prompts: a string, a token array,
    or a list of either."""
    if isinstance(field, str):
        return [field]
    if not isinstance(field, list) or not field:
        return []
    if all(isinstance(item, int) for item in field):
        return [field]  # one token array
    return [item for item in field if isinstance(item, str | list)]


def _count(value: Any) -> int:
    return value if type(value) is int and value > 0 else 1
