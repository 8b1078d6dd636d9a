"""Reloads reach every gateway process: a reload applied here is published on a Redis channel,
and every other process (workers of this server, other replicas) applies the same YAML text.

Anyone who can PUBLISH on the Redis server could otherwise reconfigure every gateway (drop
`auth:` and it runs open), so every message is signed: `v1.<hex HMAC-SHA256>.<JSON body>`, the
HMAC keyed by `reload.broadcast_secret` over the channel name and the body. The body carries the
sender, a timestamp and a random nonce besides the YAML text. A process checks the signature
(`hmac.compare_digest`) before it parses anything, then refuses messages older than `MAX_AGE_S`
(or that far in the future: clocks must agree within it) and nonces it has already seen, so a
recorded message cannot roll a gateway back. Refused messages are counted in
`gateway_reload_broadcasts_rejected_total{reason}` and logged once per reason.

Each process validates and builds on its own; one that cannot apply the text keeps its old
config and says so on `/admin/config` and in `gateway_config_reloads_total{outcome="refused"}`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Literal

import orjson

from gateway.config.safe_yaml import MAX_BYTES
from gateway.metering.metrics import Metrics

logger = logging.getLogger(__name__)

VERSION = b"v1"
MAX_AGE_S = 60.0
MAX_MESSAGE_BYTES = 4 * MAX_BYTES  # the YAML (JSON-escaped) and the envelope

Rejection = Literal["unsigned", "forged", "malformed", "stale", "replayed"]


def signature(secret: bytes, channel: str, body: bytes) -> bytes:
    """The hex HMAC-SHA256 of a message body, bound to its channel."""
    mac = hmac.new(secret, channel.encode() + b"\n" + body, hashlib.sha256)
    return mac.hexdigest().encode()


def seal(secret: bytes, channel: str, origin: str, text: str, *, now: float | None = None) -> bytes:
    """A signed message carrying `text`."""
    body = orjson.dumps(
        {
            "origin": origin,
            "ts": time.time() if now is None else now,
            "nonce": os.urandom(16).hex(),
            "text": text,
        }
    )
    return VERSION + b"." + signature(secret, channel, body) + b"." + body


class _Rejected(Exception):
    def __init__(self, reason: Rejection) -> None:
        self.reason = reason


class ReloadBroadcast:
    def __init__(
        self,
        url: str,
        channel: str,
        secret: bytes,
        apply: Callable[[str], Awaitable[None]],
        metrics: Metrics,
    ) -> None:
        import redis.asyncio as redis

        self._client = redis.Redis.from_url(url, socket_timeout=5)
        self._channel = channel
        self._secret = secret
        self._apply = apply
        self._metrics = metrics
        self._origin = f"{os.uname().nodename}:{os.getpid()}:{os.urandom(4).hex()}"
        self._listener: asyncio.Task[None] | None = None
        self._seen: dict[str, float] = {}  # nonce → its timestamp, kept while it could replay
        self._logged: set[Rejection] = set()

    def start(self) -> None:
        self._listener = asyncio.create_task(self._listen())

    async def publish(self, text: str) -> None:
        message = seal(self._secret, self._channel, self._origin, text)
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
        data = message.get("data")
        if message.get("type") != "message" or not isinstance(data, bytes):
            return
        try:
            text = self._open(data)
        except _Rejected as rejected:
            self._reject(rejected.reason)
            return
        if text is not None:
            await self._apply(text)

    def _open(self, data: bytes) -> str | None:
        """The YAML text of a message to apply, or None for this process's own message;
        raises _Rejected for any other."""
        if len(data) > MAX_MESSAGE_BYTES:
            raise _Rejected("malformed")
        version, _, rest = data.partition(b".")
        claimed, _, body = rest.partition(b".")
        if version != VERSION or len(claimed) != 64 or not body:
            raise _Rejected("unsigned")
        if not hmac.compare_digest(claimed, signature(self._secret, self._channel, body)):
            raise _Rejected("forged")
        try:  # only a message signed with the secret is parsed
            payload = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise _Rejected("malformed") from None
        if not isinstance(payload, dict):
            raise _Rejected("malformed")
        origin, ts, nonce, text = (payload.get(k) for k in ("origin", "ts", "nonce", "text"))
        if not (isinstance(ts, int | float) and isinstance(nonce, str) and isinstance(text, str)):
            raise _Rejected("malformed")
        if origin == self._origin:
            return None
        now = time.time()
        if abs(now - ts) > MAX_AGE_S:
            raise _Rejected("stale")
        if nonce in self._seen:
            raise _Rejected("replayed")
        self._seen = {n: t for n, t in self._seen.items() if abs(now - t) <= MAX_AGE_S}
        self._seen[nonce] = ts
        return text

    def _reject(self, reason: Rejection) -> None:
        self._metrics.reload_broadcasts_rejected.labels(reason).inc()
        if reason not in self._logged:
            self._logged.add(reason)
            logger.warning(
                "reload broadcast: ignored a message (%s) on %r; further ones are only counted"
                " in gateway_reload_broadcasts_rejected_total",
                reason,
                self._channel,
            )

    async def aclose(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        await self._client.aclose()
