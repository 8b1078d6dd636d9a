"""From YAML text to a validated `GatewayConfig`, or a `ConfigError` listing every problem.

Steps: parse YAML → interpolate `${VAR}` / `${VAR:-default}` → strict schema → cross-field checks.
Every problem is reported with its YAML path (`endpoints[0].served_models[1].traffic`), and as
many problems as can be found are reported at once.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from gateway.config import GatewayConfig
from gateway.errors import ConfigError, ConfigIssue

# `$${` is an escaped literal `${`; otherwise `${NAME}` or `${NAME:-default}`.
_VARIABLE = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_WHOLE_VARIABLE = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*(?::-[^}]*)?\}$")


@dataclass(frozen=True, slots=True)
class LoadedConfig:
    """A validated config and what it was made from."""

    config: GatewayConfig
    source: Path | None  # the file it was read from; None when given as text
    version: str  # SHA-256 of the interpolated document: equal configs share a version

    @property
    def base_dir(self) -> Path:
        """Relative model paths resolve against the config file's folder."""
        return self.source.parent if self.source else Path.cwd()


def format_path(location: tuple[str | int, ...]) -> str:
    out = ""
    for part in location:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


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
        document = yaml.safe_load(text)
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
    interpolated = _interpolate(document, (), environ, issues)
    issues += _literal_key_issues(document)
    try:
        config = GatewayConfig.model_validate(interpolated)
    except ValidationError as exc:
        issues += [_issue_from_pydantic(error) for error in exc.errors()]
        raise ConfigError(issues) from exc
    issues += cross_field_issues(config)
    if issues:
        raise ConfigError(issues)
    version = hashlib.sha256(yaml.safe_dump(interpolated, sort_keys=True).encode()).hexdigest()
    return LoadedConfig(config=config, source=source, version=version[:16])


def _interpolate(
    node: Any, location: tuple[str | int, ...], environ: Mapping[str, str], issues: list[ConfigIssue]
) -> Any:
    if isinstance(node, dict):
        return {k: _interpolate(v, (*location, str(k)), environ, issues) for k, v in node.items()}
    if isinstance(node, list):
        return [_interpolate(v, (*location, i), environ, issues) for i, v in enumerate(node)]
    if not isinstance(node, str) or "${" not in node:
        return node

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$${":
            return "${"
        name, default = match.group(1), match.group(2)
        if name in environ:
            return environ[name]
        if default is not None:
            return default
        issues.append(ConfigIssue(format_path(location), f"environment variable {name} is not set"))
        return ""

    return _VARIABLE.sub(substitute, node)


def _literal_key_issues(document: dict[str, Any]) -> list[ConfigIssue]:
    """A `key:` must come from the environment: a literal key in a YAML file is a leaked key."""
    auth = document.get("auth")
    keys = auth.get("keys") if isinstance(auth, dict) else None
    if not isinstance(keys, list):
        return []
    return [
        ConfigIssue(
            format_path(("auth", "keys", i, "key")),
            "must be an environment variable reference such as ${MY_KEY}, never a literal key"
            " (or give its sha256 instead)",
        )
        for i, entry in enumerate(keys)
        if isinstance(entry, dict)
        and "key" in entry
        and not (isinstance(entry["key"], str) and _WHOLE_VARIABLE.match(entry["key"]))
    ]


def _issue_from_pydantic(error: Any) -> ConfigIssue:
    location = tuple(error["loc"])
    message = error["msg"]
    if error["type"] == "extra_forbidden":
        message = "unknown key"
    elif message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    return ConfigIssue(format_path(location), message)


def cross_field_issues(config: GatewayConfig) -> list[ConfigIssue]:
    """Checks that span several fields: unique names, traffic sums, one default, key identity."""
    issues: list[ConfigIssue] = []
    seen_names: dict[str, int] = {}
    defaults: list[int] = []
    for i, endpoint in enumerate(config.endpoints):
        where = f"endpoints[{i}]"
        if endpoint.name in seen_names:
            issues.append(
                ConfigIssue(
                    f"{where}.name",
                    f"duplicate endpoint name {endpoint.name!r}"
                    f" (also endpoints[{seen_names[endpoint.name]}])",
                )
            )
        seen_names.setdefault(endpoint.name, i)
        if endpoint.default:
            defaults.append(i)
        total = sum(served.traffic for served in endpoint.served_models)
        if total != 100:
            issues.append(
                ConfigIssue(f"{where}.served_models", f"traffic must sum to 100, not {total}")
            )
    if len(defaults) > 1:
        for i in defaults[1:]:
            issues.append(
                ConfigIssue(
                    f"endpoints[{i}].default",
                    f"only one endpoint can be the default (endpoints[{defaults[0]}] already is)",
                )
            )
    if config.auth is not None:
        issues += _key_issues(config)
    return issues


def _key_issues(config: GatewayConfig) -> list[ConfigIssue]:
    assert config.auth is not None
    issues: list[ConfigIssue] = []
    ids: dict[str, int] = {}
    digests: dict[str, int] = {}
    for i, key in enumerate(config.auth.keys):
        where = f"auth.keys[{i}]"
        if key.id in ids:
            issues.append(ConfigIssue(f"{where}.id", f"duplicate key id {key.id!r}"))
        ids.setdefault(key.id, i)
        if (key.sha256 is None) == (key.key is None):
            issues.append(ConfigIssue(where, "give exactly one of sha256 or key"))
            continue
        digest = key.sha256 or hashlib.sha256(key.key.get_secret_value().encode()).hexdigest()  # type: ignore[union-attr]
        if digest in digests:
            issues.append(
                ConfigIssue(where, f"the same key is already configured as auth.keys[{digests[digest]}]")
            )
        digests.setdefault(digest, i)
    return issues
