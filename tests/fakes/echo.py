"""The deterministic "model" behind every fake: it echoes the last message, counts words as tokens.

- reply: `"echo: " + <text of the last message>`, whitespace normalised to single spaces;
- prompt tokens: whitespace-separated words over all message contents (plus any extra text, such
  as Anthropic's `system`) + `MESSAGE_OVERHEAD_TOKENS` per message;
- completion tokens: words of the reply (after truncation to the token limit).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

REPLY_PREFIX = "echo:"
MESSAGE_OVERHEAD_TOKENS = 3


def text_of(content: Any) -> str:
    """Text of a message content: a string, or a list of parts whose text parts join with spaces."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def content_of(message: Any) -> Any:
    return message.get("content") if isinstance(message, dict) else None


def count_words(text: str) -> int:
    return len(text.split())


def last_text(messages: Sequence[Any]) -> str:
    return text_of(content_of(messages[-1])) if messages else ""


def prompt_tokens(messages: Sequence[Any], extra: Iterable[Any] = ()) -> int:
    words = sum(count_words(text_of(content_of(message))) for message in messages)
    words += sum(count_words(text_of(content)) for content in extra)
    return words + MESSAGE_OVERHEAD_TOKENS * len(messages)


def token_limit(body: Mapping[str, Any], *names: str) -> int | None:
    """The first of `names` holding an integer (bools excluded), else None."""
    for name in names:
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


@dataclass(frozen=True)
class Reply:
    words: tuple[str, ...]
    truncated: bool

    @property
    def text(self) -> str:
        return " ".join(self.words)

    @property
    def tokens(self) -> int:
        return len(self.words)

    @property
    def pieces(self) -> list[str]:
        """Streaming deltas, one per word; they concatenate to `text`."""
        return [word if index == 0 else f" {word}" for index, word in enumerate(self.words)]


def echo(text: str, limit: int | None = None) -> Reply:
    words = (REPLY_PREFIX, *text.split())
    if limit is not None and limit < len(words):
        return Reply(words[: max(limit, 0)], truncated=True)
    return Reply(words, truncated=False)
