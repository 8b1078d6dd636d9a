"""Counting tokens when an upstream reports none (tiktoken's cl100k_base, from litellm's bundled
copy of the encoding file: nothing is downloaded)."""

from __future__ import annotations

import importlib.util
import os
from functools import cache
from pathlib import Path
from typing import Any


@cache
def _encoding() -> Any:
    spec = importlib.util.find_spec("litellm")
    if spec is not None and spec.submodule_search_locations:
        bundled = (
            Path(next(iter(spec.submodule_search_locations))) / "litellm_core_utils" / "tokenizers"
        )
        os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(bundled))
    try:
        import tiktoken

        return tiktoken.get_encoding("cl100k_base")
    except Exception:
        return None


def tokenizer_loaded() -> bool:
    """Whether counting is cheap now: the first count loads the encoding (seconds)."""
    return _encoding.cache_info().currsize > 0


def count_tokens(texts: list[str]) -> int:
    """Tokens in `texts` (blocking: call it from a thread)."""
    encoding = _encoding()
    if encoding is None:
        return sum(max(1, len(text) // 4) for text in texts if text)
    return sum(len(encoding.encode(text, disallowed_special=())) for text in texts if text)


def message_texts(messages: Any) -> list[str]:
    """The text of chat messages (string content or text parts)."""
    texts: list[str] = []
    if not isinstance(messages, list):
        return texts
    for message in messages:
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            texts += [
                p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
            ]
    return texts
