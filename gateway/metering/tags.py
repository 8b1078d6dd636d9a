"""Request tags: a JSON object of short strings a client attaches to one call, stored with its
usage row so that usage can be grouped by them (`group_by=tag:team`).

Clients send them as `x-gateway-tags` or, as Databricks' AI Gateway takes them,
`Databricks-Ai-Gateway-Request-Tags`. Keys use the same safe charset that `group_by` accepts,
so every stored tag can be grouped by.
"""

from __future__ import annotations

import re
from typing import Final

import orjson

from gateway.errors import BadRequest

TAGS: Final = b"x-gateway-tags"
DATABRICKS_TAGS: Final = b"databricks-ai-gateway-request-tags"
MAX_HEADER_BYTES: Final = 4096
MAX_TAGS: Final = 16
MAX_VALUE_CHARS: Final = 256
TAG_KEY: Final = re.compile(r"[A-Za-z0-9_.\-]{1,64}")  # fullmatch: `$` takes a final \n
KEY_RULE: Final = "1 to 64 characters of A-Z, a-z, 0-9, '_', '.', '-'"


def parse_tags(gateway: bytes | None, databricks: bytes | None) -> dict[str, str]:
    """The tags of a request ({} when it sent none), or a 400 saying what is wrong with them."""
    if gateway is not None and databricks is not None:
        raise BadRequest("Send request tags in one header: x-gateway-tags or its Databricks name.")
    header = gateway if gateway is not None else databricks
    if header is None:
        return {}
    if len(header) > MAX_HEADER_BYTES:
        raise BadRequest(f"Request tags exceed {MAX_HEADER_BYTES} bytes.")
    try:
        document = orjson.loads(header)
    except orjson.JSONDecodeError as exc:
        raise BadRequest("Request tags must be a JSON object of strings.") from exc
    if not isinstance(document, dict):
        raise BadRequest("Request tags must be a JSON object of strings.")
    if len(document) > MAX_TAGS:
        raise BadRequest(f"At most {MAX_TAGS} request tags are allowed.")
    for key, value in document.items():
        _check_tag(key, value, "request tag")
    return document


USAGE_CONTEXT_PREFIX: Final = "usage_context."


def with_usage_context(tags: dict[str, str], context: object) -> dict[str, str]:
    """`tags` plus Databricks' `usage_context` (an object of strings) as `usage_context.<key>`
    tags, so the usage row, the trace and the table row keep it; or a 400 saying what is wrong."""
    if not isinstance(context, dict):
        raise BadRequest("`usage_context` must be a JSON object of strings.")
    merged = dict(tags)
    for key, value in context.items():
        _check_tag(f"{USAGE_CONTEXT_PREFIX}{key}", value, "`usage_context` entry")
        merged.setdefault(f"{USAGE_CONTEXT_PREFIX}{key}", value)
    if len(merged) > MAX_TAGS:
        raise BadRequest(f"At most {MAX_TAGS} request tags are allowed, usage_context included.")
    return merged


def _check_tag(key: str, value: object, what: str) -> None:
    """A 400 unless `key` and `value` make a tag (`what` names it in the message)."""
    if not TAG_KEY.fullmatch(key):
        raise BadRequest(f"The key of a {what} must be {KEY_RULE}.")
    if not isinstance(value, str):
        raise BadRequest(f"The {what} {key!r} must be a string.")
    if len(value) > MAX_VALUE_CHARS or not value.isprintable():
        raise BadRequest(
            f"The {what} {key!r} must be at most {MAX_VALUE_CHARS} printable characters."
        )


def check_tag_key(key: str) -> str:
    """A tag key to group usage by, or ValueError (it reaches SQL only as a bound value)."""
    if not TAG_KEY.fullmatch(key):
        raise ValueError(f"invalid tag key {key!r}: want {KEY_RULE}")
    return key
