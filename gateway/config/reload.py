"""Applying a new config to a running gateway without failing a request.

A reload reads, interpolates and validates the YAML, builds the complete new runtime beside the
old one (reusing the models that did not change), and only then swaps the one reference requests
read. Requests already running finish on the runtime they started with; what the new runtime no
longer uses is closed after a grace period. Any failure leaves the old config serving.

Some settings are read once, when the process starts (the limit store, the usage ledger, the
reload triggers): a reload that changes one is refused, naming it, rather than reported as
applied while the process keeps the old one.
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.config.loading import LoadedConfig, load_config_file, parse_config
from gateway.config.redaction import redacted
from gateway.config.schema import GatewayConfig, ReloadConfig, UsageConfig
from gateway.errors import ConfigError, ConfigIssue
from gateway.metering.metrics import Metrics
from gateway.runtime import Runtime, RuntimeHolder, freeze_loaded_objects

if TYPE_CHECKING:
    from gateway.config.broadcast import ReloadBroadcast

logger = logging.getLogger(__name__)

RETIRE_AFTER_S = 120.0  # longer than any request that started on the old runtime should take
# Bound to the listening socket's protocol at start (gateway/server/): a reload cannot change them.

# Read once at start-up (`app.py` opens the limiter and the ledger, `triggers.py` starts the
# watcher and the broadcast): changing them needs a restart. What else a config holds is read
# per request or rebuilt with each runtime (`server.*`, `limits.on_store_error`,
# `limits.default_max_tokens`, `registry.*`, auth, groups, endpoints).
RESTART_ONLY: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("limits", ("store",)),
    ("usage", tuple(UsageConfig.model_fields)),
    ("reload", tuple(ReloadConfig.model_fields)),
    (
        "inference_table",
        ("path", "flush_interval_s", "max_file_bytes", "max_queued_rows"),
    ),
    ("tracing", ("mlflow", "batch_size", "flush_interval_s", "max_queued_traces", "timeout_s")),
    # the HTTP connection limits (gateway/server/): uvicorn's protocol takes them at start
    (
        "server",
        ("max_header_bytes", "max_headers", "header_timeout_s", "keep_alive_s", "max_connections"),
    ),
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
        # Parsing is bounded (safe_yaml.py) but not free: never on the event loop.
        if text is None:
            if self._source is None:
                raise ConfigError([ConfigIssue("", "no config file to re-read: send the YAML")])
            loaded = await asyncio.to_thread(load_config_file, self._source)
        else:
            loaded = await asyncio.to_thread(parse_config, text, source=old.loaded.source)
        refused = restart_only_issues(old.loaded, loaded)
        if refused:
            raise ConfigError(refused)
        try:
            new = await asyncio.to_thread(self._build, loaded, old)
        except ConfigError as exc:
            raise loaded.substitutions.scrub_error(exc) from None
        except Exception as exc:
            scrub = loaded.substitutions.scrub
            logger.error("building the new runtime failed:\n%s", scrub(traceback.format_exc()))
            issue = ConfigIssue("", scrub(f"{type(exc).__name__}: {exc}"))
            raise ConfigError([issue]) from None
        self._holder.current = new  # the swap: one reference, cannot fail
        freeze_loaded_objects()
        changes = loaded.substitutions.scrub_tree(diff(old.loaded.config, new.loaded.config))
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


def _keys(config: GatewayConfig) -> dict[str, Any]:
    return {key.id: key for key in config.auth.keys} if config.auth is not None else {}


def restart_only_issues(old: LoadedConfig, new: LoadedConfig) -> list[ConfigIssue]:
    """The settings of `RESTART_ONLY` that `new` changes, each with the value that keeps running
    (as `/admin/config` shows it: secrets masked)."""
    issues = []
    shown = redacted(old)
    for section, names in RESTART_ONLY:
        before, after = getattr(old.config, section), getattr(new.config, section)
        for name in names:
            if getattr(before, name) == getattr(after, name):
                continue
            kept = _as_written(shown[section][name])
            issues.append(
                ConfigIssue(
                    f"{section}.{name}",
                    f"changing it needs a restart; the running gateway keeps {kept}",
                )
            )
    return issues


def _as_written(value: Any) -> str:
    if value is None:
        return "it unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
