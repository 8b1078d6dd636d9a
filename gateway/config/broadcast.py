"""Reloads reach every gateway process: a reload applied here is published on a Redis channel,
and every other process (workers of this server, other replicas) applies the same YAML text.

Each process validates and builds on its own; one that cannot apply the text keeps its old
config and says so on `/admin/config` and in `gateway_config_reload_failures_total`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable

import orjson

logger = logging.getLogger(__name__)


class ReloadBroadcast:
    def __init__(self, url: str, channel: str, apply: Callable[[str], Awaitable[None]]) -> None:
        import redis.asyncio as redis

        self._client = redis.Redis.from_url(url, socket_timeout=5)
        self._channel = channel
        self._apply = apply
        self._origin = f"{os.uname().nodename}:{os.getpid()}:{os.urandom(4).hex()}"
        self._listener: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._listener = asyncio.create_task(self._listen())

    async def publish(self, text: str) -> None:
        message = orjson.dumps({"origin": self._origin, "text": text})
        try:
            await self._client.publish(self._channel, message)
        except Exception:
            logger.warning("could not broadcast the reload", exc_info=True)

    async def _listen(self) -> None:
        while True:
            try:
                async with self._client.pubsub() as pubsub:
                    await pubsub.subscribe(self._channel)
                    async for message in pubsub.listen():
                        await self._handle(message)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.warning("reload broadcast: subscription lost; retrying", exc_info=True)
                await asyncio.sleep(1)

    async def _handle(self, message: dict[str, object]) -> None:
        if message.get("type") != "message" or not isinstance(message.get("data"), bytes):
            return
        try:
            payload = orjson.loads(message["data"])  # type: ignore[arg-type]
        except orjson.JSONDecodeError:
            return
        if payload.get("origin") == self._origin or not isinstance(payload.get("text"), str):
            return
        await self._apply(payload["text"])

    async def aclose(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        await self._client.aclose()
