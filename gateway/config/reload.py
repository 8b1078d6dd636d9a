"""Applying a new config to a running gateway without failing a request.

A reload reads, interpolates and validates the YAML, builds the complete new runtime beside the
old one (reusing the models that did not change), and only then swaps the one reference requests
read. Requests already running finish on the runtime they started with; what the new runtime no
longer uses is closed after a grace period. Any failure leaves the old config serving.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.config.loading import LoadedConfig, load_config_file, parse_config
from gateway.config.schema import GatewayConfig
from gateway.errors import ConfigError, ConfigIssue
from gateway.metering.metrics import Metrics
from gateway.runtime import Runtime, RuntimeHolder, freeze_loaded_objects

if TYPE_CHECKING:
    from gateway.config.broadcast import ReloadBroadcast

logger = logging.getLogger(__name__)

RETIRE_AFTER_S = 120.0  # longer than any request that started on the old runtime should take
# Bound to the listening socket's protocol at start (gateway/server/): a reload cannot change them.
START_ONLY = (
    "max_header_bytes",
    "max_headers",
    "header_timeout_s",
    "keep_alive_s",
    "max_connections",
)


@dataclass(frozen=True, slots=True)
class Applied:
    version: str
    applied_at: float
    changes: Mapping[str, Mapping[str, list[str]]]  # section → added/removed/changed → names


@dataclass(slots=True)
class ReloadState:
    """What `/admin/config` reports: the active version and how the last attempts went."""

    active: Applied | None = None
    last_error: list[str] | None = None  # the issues of the last refused reload
    last_error_at: float | None = None
    reloads: int = 0
    failures: int = 0
    retiring: set[asyncio.Task[None]] = field(default_factory=set)


class Reloader:
    def __init__(
        self,
        holder: RuntimeHolder,
        build: Callable[[LoadedConfig, Runtime | None], Runtime],
        source: Path | None,
        metrics: Metrics,
    ) -> None:
        self._holder = holder
        self._build = build  # blocking: run in a thread
        self._source = source
        self._metrics = metrics
        self._lock = asyncio.Lock()
        self.state = ReloadState()
        self.broadcast: ReloadBroadcast | None = None  # set when other processes must follow

    def activated(self, runtime: Runtime) -> None:
        """Record the first runtime (start-up) as the active version."""
        self.state.active = Applied(runtime.loaded.version, time.time(), {})
        self._metrics.config_version.labels(runtime.loaded.version).set(1)

    async def reload(self, text: str | None = None, *, broadcast: bool = True) -> Applied:
        """Apply `text` (or re-read the config file); ConfigError leaves everything as it was.

        A reload applied here is broadcast to the other processes, unless it came from one.
        """
        async with self._lock:  # one reload at a time; each sees the one before it
            try:
                applied, applied_text = await self._apply(text)
            except ConfigError as exc:
                self.state.failures += 1
                self.state.last_error = [str(issue) for issue in exc.issues]
                self.state.last_error_at = time.time()
                self._metrics.config_reloads.labels("refused").inc()
                logger.error("config reload refused, the old config keeps serving:\n%s", exc)
                raise
            previous = self.state.active
            self.state.reloads += 1
            self.state.active = applied
            self.state.last_error = None
            self._metrics.config_reloads.labels("applied").inc()
            if previous is not None and previous.version != applied.version:
                self._metrics.config_version.remove(previous.version)
            self._metrics.config_version.labels(applied.version).set(1)
        if broadcast and self.broadcast is not None:
            await self.broadcast.publish(applied_text)
        return applied

    async def _apply(self, text: str | None) -> tuple[Applied, str]:
        old = self._holder.get()
        if text is None:
            if self._source is None:
                raise ConfigError([ConfigIssue("", "no config file to re-read: send the YAML")])
            loaded = await asyncio.to_thread(load_config_file, self._source)
        else:
            loaded = parse_config(text, source=old.loaded.source)
        try:
            new = await asyncio.to_thread(self._build, loaded, old)
        except ConfigError:
            raise
        except Exception as exc:
            logger.exception("building the new runtime failed")
            raise ConfigError([ConfigIssue("", f"{type(exc).__name__}: {exc}")]) from exc
        self._holder.current = new  # the swap: one reference, cannot fail
        freeze_loaded_objects()
        changes = diff(old.loaded.config, new.loaded.config)
        kept = [f"server.{name}" for name in START_ONLY if _changed(old, new, name)]
        if kept:
            logger.warning("%s take effect at the next restart, not on reload", ", ".join(kept))
        logger.info("config %s applied (was %s): %s", loaded.version, old.loaded.version, changes)
        task = asyncio.create_task(_retire_later(old, new))
        self.state.retiring.add(task)
        task.add_done_callback(self.state.retiring.discard)
        return Applied(loaded.version, time.time(), changes), loaded.text

    async def aclose(self) -> None:
        for task in list(self.state.retiring):
            task.cancel()
        if self.broadcast is not None:
            await self.broadcast.aclose()


async def _retire_later(old: Runtime, new: Runtime) -> None:
    try:
        await asyncio.sleep(RETIRE_AFTER_S)
    finally:  # on shutdown too: close now what the new runtime does not share
        await old.retire(new)


def diff(old: GatewayConfig, new: GatewayConfig) -> dict[str, dict[str, list[str]]]:
    """Endpoints, keys and groups added, removed and changed, by name."""
    sections = {
        "endpoints": ({e.name: e for e in old.endpoints}, {e.name: e for e in new.endpoints}),
        "keys": (_keys(old), _keys(new)),
        "groups": (dict(old.groups), dict(new.groups)),
    }
    result: dict[str, dict[str, list[str]]] = {}
    for section, (before, after) in sections.items():
        result[section] = {
            "added": sorted(after.keys() - before.keys()),
            "removed": sorted(before.keys() - after.keys()),
            "changed": sorted(n for n in before.keys() & after.keys() if before[n] != after[n]),
        }
    return result


def _changed(old: Runtime, new: Runtime, field: str) -> bool:
    before, after = old.loaded.config.server, new.loaded.config.server
    return bool(getattr(before, field) != getattr(after, field))


def _keys(config: GatewayConfig) -> dict[str, Any]:
    return {key.id: key for key in config.auth.keys} if config.auth is not None else {}


def redacted(config: GatewayConfig) -> dict[str, Any]:
    """The config as JSON with every secret masked (pydantic writes SecretStr as ******)."""
    return config.model_dump(mode="json")
