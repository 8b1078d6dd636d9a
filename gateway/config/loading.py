"""From YAML text to a validated `GatewayConfig`, or a `ConfigError` listing every problem.

Steps: parse YAML (with limits: `safe_yaml.py`) → interpolate `${VAR}` / `${VAR:-default}`
(`interpolation.py`) → strict schema → cross-field checks. Every problem is reported with its YAML
path (`endpoints[0].served_models[1].traffic`), and as many problems as can be found are reported
at once. No message quotes a value read from the environment: they name the variable instead.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from gateway.config.interpolation import WHOLE_VARIABLE, Substitutions, format_path, interpolate
from gateway.config.safe_yaml import TooLarge, load_yaml
from gateway.config.schema import GatewayConfig
from gateway.errors import ConfigError, ConfigIssue

__all__ = ["LoadedConfig", "format_path", "load_config_file", "parse_config"]


@dataclass(frozen=True, slots=True)
class LoadedConfig:
    """A validated config and what it was made from."""

    config: GatewayConfig
    source: Path | None  # the file it was read from; None when given as text
    version: str  # SHA-256 of the interpolated document: equal configs share a version
    text: str  # the YAML it was made from (before interpolation), for reloads that re-apply it
    # where it read the environment: what errors, logs and /admin/config show instead
    substitutions: Substitutions = field(default_factory=Substitutions)

    @property
    def base_dir(self) -> Path:
        """Relative model paths resolve against the config file's folder."""
        return self.source.parent if self.source else Path.cwd()


def load_config_file(path: str | Path, environ: Mapping[str, str] | None = None) -> LoadedConfig:
    source = Path(path)
    try:
        text = source.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([ConfigIssue("", f"cannot read {source}: {exc.strerror}")]) from exc
    return parse_config(text, source=source.resolve(), environ=environ)


def parse_config(
    text: str, *, source: Path | None = None, environ: Mapping[str, str] | None = None
) -> LoadedConfig:
    environ = os.environ if environ is None else environ
    try:
        document = load_yaml(text)
    except TooLarge as exc:
        raise ConfigError([ConfigIssue("", str(exc))]) from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([ConfigIssue("", f"invalid YAML{where}: {problem}")]) from exc
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise ConfigError([ConfigIssue("", "the config must be a YAML mapping")])

    issues: list[ConfigIssue] = []
    interpolated, substitutions = interpolate(document, environ, issues)
    issues += _literal_key_issues(document)
    issues += cross_field_issues(interpolated)
    config: GatewayConfig | None = None
    try:
        config = GatewayConfig.model_validate(interpolated)
    except ValidationError as exc:
        # Only `msg` is used, never `input`; scrubbing covers messages that embed the input.
        issues += [_issue_from_pydantic(error) for error in exc.errors(include_input=False)]
    if issues or config is None:
        error = ConfigError(sorted(issues, key=_document_order))
        raise substitutions.scrub_error(error)
    version = hashlib.sha256(yaml.safe_dump(interpolated, sort_keys=True).encode()).hexdigest()
    return LoadedConfig(
        config=config, source=source, version=version[:16], text=text, substitutions=substitutions
    )


def _document_order(issue: ConfigIssue) -> tuple[tuple[int, int | str], ...]:
    """Issues sorted as their paths appear in the file (`[2]` before `[10]`)."""
    parts = re.findall(r"\[(\d+)\]|([^.\[\]]+)", issue.path)
    return tuple((0, int(index)) if index else (1, name) for index, name in parts)


def _literal_key_issues(document: dict[str, Any]) -> list[ConfigIssue]:
    """A `key:` (and `reload.broadcast_secret`) must come from the environment: a literal key in
    a YAML file is a leaked key."""
    issues = []
    reload = document.get("reload")
    secret = reload.get("broadcast_secret") if isinstance(reload, dict) else None
    if secret is not None and not _is_reference(secret):
        issues.append(
            ConfigIssue(
                "reload.broadcast_secret",
                "must be an environment variable reference such as ${GATEWAY_BROADCAST_SECRET},"
                " never a literal secret",
            )
        )
    auth = document.get("auth")
    keys = auth.get("keys") if isinstance(auth, dict) else None
    if not isinstance(keys, list):
        return issues
    return issues + [
        ConfigIssue(
            format_path(("auth", "keys", i, "key")),
            "must be an environment variable reference such as ${MY_KEY}, never a literal key"
            " (or give its sha256 instead)",
        )
        for i, entry in enumerate(keys)
        if isinstance(entry, dict) and "key" in entry and not _is_reference(entry["key"])
    ]


def _is_reference(value: Any) -> bool:
    """Exactly one `${VAR}`."""
    return isinstance(value, str) and bool(WHOLE_VARIABLE.match(value))


_ENDPOINT_TYPES = frozenset({"custom", "foundation", "external"})


def _issue_from_pydantic(error: Any) -> ConfigIssue:
    location = list(error["loc"])
    # A discriminated union puts the chosen tag in the location: endpoints.0.custom.name.
    if len(location) > 2 and location[0] == "endpoints" and location[2] in _ENDPOINT_TYPES:
        del location[2]
    message = error["msg"]
    if error["type"] in ("union_tag_invalid", "union_tag_not_found"):
        location.append("type")
        message = f"must be one of {', '.join(sorted(_ENDPOINT_TYPES))}"
    elif error["type"] == "extra_forbidden":
        message = "unknown key"
    elif message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    return ConfigIssue(format_path(tuple(location)), message)


def cross_field_issues(document: dict[str, Any]) -> list[ConfigIssue]:
    """Checks that span several fields: unique names, traffic sums, one default, key identity.

    They read the interpolated document rather than the validated model, so that they are
    reported together with schema errors; entries of the wrong shape are the schema's to report.
    """
    keys = _entries(document.get("auth"), "keys")
    groups = document.get("groups")
    return (
        _endpoint_issues(_entries(document, "endpoints"))
        + _key_issues(keys)
        + _group_reference_issues(keys, groups if isinstance(groups, dict) else {})
    )


def _group_reference_issues(
    keys: list[tuple[int, dict[str, Any]]], groups: dict[str, Any]
) -> list[ConfigIssue]:
    issues: list[ConfigIssue] = []
    for i, key in keys:
        named = key.get("groups")
        for j, name in enumerate(named if isinstance(named, list) else ()):
            if name not in groups:
                issues.append(ConfigIssue(f"auth.keys[{i}].groups[{j}]", f"unknown group {name!r}"))
    return issues


def _entries(parent: Any, key: str) -> list[tuple[int, dict[str, Any]]]:
    items = parent.get(key) if isinstance(parent, dict) else None
    if not isinstance(items, list):
        return []
    return [(i, item) for i, item in enumerate(items) if isinstance(item, dict)]


def _endpoint_issues(endpoints: list[tuple[int, dict[str, Any]]]) -> list[ConfigIssue]:
    issues: list[ConfigIssue] = []
    first_with_name: dict[Any, int] = {}
    first_default: int | None = None
    for i, endpoint in endpoints:
        where = f"endpoints[{i}]"
        name = endpoint.get("name")
        if isinstance(name, str) and name in first_with_name:
            issues.append(
                ConfigIssue(
                    f"{where}.name",
                    f"duplicate endpoint name {name!r} (also endpoints[{first_with_name[name]}])",
                )
            )
        first_with_name.setdefault(name, i)
        if endpoint.get("default") is True:
            if first_default is None:
                first_default = i
            else:
                issues.append(
                    ConfigIssue(
                        f"{where}.default",
                        "only one endpoint can be the default"
                        f" (endpoints[{first_default}] already is)",
                    )
                )
        issues += _fallback_issues(where, endpoint, endpoints)
        if endpoint.get("type") == "foundation" and endpoint.get("deployments") == []:
            issues.append(ConfigIssue(f"{where}.deployments", "needs at least one deployment"))
        served = endpoint.get("served_models")
        if endpoint.get("type") == "custom" and isinstance(served, list):
            traffic = [s.get("traffic", 100) for s in served if isinstance(s, dict)]
            if not served:
                issues.append(ConfigIssue(f"{where}.served_models", "needs at least one model"))
            elif all(type(t) is int for t in traffic) and sum(traffic) != 100:
                issues.append(
                    ConfigIssue(
                        f"{where}.served_models", f"traffic must sum to 100, not {sum(traffic)}"
                    )
                )
    return issues


def _fallback_issues(
    where: str, endpoint: dict[str, Any], endpoints: list[tuple[int, dict[str, Any]]]
) -> list[ConfigIssue]:
    """Fallbacks name other LLM endpoints of the same task."""
    fallbacks = endpoint.get("fallbacks")
    if not isinstance(fallbacks, list):
        return []
    by_name = {e.get("name"): e for _, e in endpoints}
    issues: list[ConfigIssue] = []
    for j, name in enumerate(fallbacks):
        target = by_name.get(name)
        path = f"{where}.fallbacks[{j}]"
        if target is None:
            issues.append(ConfigIssue(path, f"unknown endpoint {name!r}"))
        elif target is endpoint:
            issues.append(ConfigIssue(path, "an endpoint cannot be its own fallback"))
        elif target.get("type") == "custom":
            issues.append(
                ConfigIssue(path, f"{name!r} is a custom endpoint; fallbacks must be LLM endpoints")
            )
        elif target.get("task") != endpoint.get("task"):
            issues.append(
                ConfigIssue(
                    path, f"{name!r} serves {target.get('task')}, not {endpoint.get('task')}"
                )
            )
    return issues


def _key_issues(keys: list[tuple[int, dict[str, Any]]]) -> list[ConfigIssue]:
    issues: list[ConfigIssue] = []
    first_with_id: dict[Any, int] = {}
    first_with_digest: dict[str, int] = {}
    for i, key in keys:
        where = f"auth.keys[{i}]"
        if key.get("id") in first_with_id:
            issues.append(ConfigIssue(f"{where}.id", f"duplicate key id {key['id']!r}"))
        first_with_id.setdefault(key.get("id"), i)
        digest, value = key.get("sha256"), key.get("key")
        if (digest is None) == (value is None):
            issues.append(ConfigIssue(where, "give exactly one of sha256 or key"))
            continue
        if isinstance(value, str):
            if len(value) < 16:
                issues.append(ConfigIssue(f"{where}.key", "is shorter than 16 characters"))
            digest = hashlib.sha256(value.encode()).hexdigest()
        if not isinstance(digest, str):
            continue
        digest = digest.strip().lower()
        if digest in first_with_digest:
            issues.append(
                ConfigIssue(
                    where,
                    f"the same key is already configured as auth.keys[{first_with_digest[digest]}]",
                )
            )
        first_with_digest.setdefault(digest, i)
    return issues
