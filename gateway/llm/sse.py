"""Server-sent events: split a byte stream into complete events, as they arrive."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from gateway.errors import UpstreamTimeout


async def sse_events(chunks: AsyncIterator[bytes], idle_timeout_s: float) -> AsyncIterator[bytes]:
    """Yield each complete event (ending in a blank line) as soon as its last byte arrives.

    Only an incomplete event is held back; a chunk holding several events yields them all.
    `UpstreamTimeout` if nothing arrives for `idle_timeout_s` (a stalled stream).
    """
    pending = b""
    iterator = chunks.__aiter__()
    while True:
        try:
            async with asyncio.timeout(idle_timeout_s):
                chunk = await iterator.__anext__()
        except StopAsyncIteration:
            break
        except TimeoutError as exc:
            raise UpstreamTimeout(f"the upstream stream stalled for {idle_timeout_s:g} s") from exc
        if b"\r" in chunk:
            chunk = chunk.replace(b"\r\n", b"\n")
        pending += chunk
        end = pending.rfind(b"\n\n")
        if end < 0:
            continue
        complete, pending = pending[: end + 2], pending[end + 2 :]
        start = 0
        while start < len(complete):
            stop = complete.index(b"\n\n", start) + 2
            yield complete[start:stop]
            start = stop
    if pending.strip():
        yield pending + b"\n\n"


def event_data(event: bytes) -> bytes | None:
    """The data of an event (its `data:` lines joined), or None for comments/other fields."""
    data = [line[5:].lstrip(b" ") for line in event.split(b"\n") if line.startswith(b"data:")]
    if not data:
        return None
    return data[0] if len(data) == 1 else b"\n".join(data)
