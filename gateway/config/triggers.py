"""What makes a running gateway reload, besides `POST /admin/reload`: SIGHUP, the config file
changing (`reload.watch`), a registry alias moving (`registry.poll_s`), and a reload applied by
another process (`reload.broadcast`, signed with `reload.broadcast_secret`). Every trigger goes
through `Reloader.reload`, the one apply-and-swap step; a refused reload is logged and kept on
`/admin/config`, never raised here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from gateway.config.loading import LoadedConfig
from gateway.config.reload import Reloader
from gateway.errors import ConfigError
from gateway.metering.metrics import Metrics
from gateway.models.resolve import registry_moved
from gateway.runtime import RuntimeHolder

logger = logging.getLogger(__name__)

WATCH_EVERY_S = 1.0


class ReloadTriggers:
    def __init__(self, reloader: Reloader, holder: RuntimeHolder, metrics: Metrics) -> None:
        self._reloader = reloader
        self._holder = holder
        self._metrics = metrics
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self, loaded: LoadedConfig) -> None:
        """Start every trigger the config asks for (call once the first runtime serves)."""
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not the main thread
            loop.add_signal_handler(signal.SIGHUP, lambda: self._spawn(self._reload(None)))
        self._spawn(self._poll_registry())
        config = loaded.config
        url = config.reload.broadcast or (
            config.limits.store if config.limits.store.startswith("redis") else None
        )
        secret = config.reload.broadcast_secret
        if url is not None and secret is None:
            logger.warning(
                "reload broadcast is OFF: reloads applied here are not published on %r, and"
                " reloads published there are not followed, so other workers and replicas keep"
                " their config. To turn it on, give every process the same secret of at least"
                " 32 characters: `reload: {broadcast_secret: ${GATEWAY_BROADCAST_SECRET}}`.",
                config.reload.channel,
            )
        elif url is not None and secret is not None:
            from gateway.config.broadcast import ReloadBroadcast

            async def follow(text: str) -> None:
                with contextlib.suppress(ConfigError):
                    await self._reloader.reload(text, broadcast=False)

            broadcast = ReloadBroadcast(
                url,
                config.reload.channel,
                secret.get_secret_value().encode(),
                follow,
                self._metrics,
            )
            broadcast.start()
            self._reloader.broadcast = broadcast
        if config.reload.watch and loaded.source is not None:
            self._spawn(self._watch_file(loaded.source))

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reload(self, text: str | None) -> None:
        with contextlib.suppress(ConfigError):  # logged and kept on /admin/config
            await self._reloader.reload(text)

    async def _watch_file(self, path: Path) -> None:
        """Re-read the file when it changes (mtime or size), checked every second."""

        def signature() -> tuple[float, int] | None:
            try:
                stat = path.stat()
            except OSError:
                return None
            return (stat.st_mtime, stat.st_size)

        seen = signature()
        while True:
            await asyncio.sleep(WATCH_EVERY_S)
            current = signature()
            if current is not None and current != seen:
                seen = current
                await self._reload(None)

    async def _poll_registry(self) -> None:
        """When an alias (or /latest) points to a new version, re-apply the running config:
        the new version loads beside the old one, which serves until the swap."""
        while True:
            poll_s = self._holder.get().loaded.config.registry.poll_s
            if poll_s <= 0:  # off for now; a reload may turn it on
                await asyncio.sleep(WATCH_EVERY_S)
                continue
            await asyncio.sleep(poll_s)
            runtime = self._holder.get()
            loaded = runtime.loaded
            try:
                moved = await asyncio.to_thread(
                    registry_moved,
                    loaded.config.endpoints,
                    runtime.serving_models(),
                    base_dir=loaded.base_dir,
                    registry_uri=loaded.config.registry_uri,
                )
            except Exception as exc:  # resolve.py's messages quote no remote response
                message = exc if isinstance(exc, ValueError) else type(exc).__name__
                logger.warning("cannot poll the model registry: %s", message)
                continue
            if moved:
                logger.info("registry aliases moved: %s", ", ".join(moved))
                await self._reload(loaded.text)
