"""`${VAR}` and `${VAR:-default}` in config values, and keeping what they read out of sight.

A value read from the environment is never shown back: `Substitutions` remembers the template
each interpolated value was written as (by YAML path) and every value read, so that errors, logs,
`/admin/config` and `/ready` show `${VAR}` in its place. `GATEWAY_CONFIG_ENV_ALLOW`, when set,
restricts which variables a config may read (comma-separated names and `PREFIX_*` globs).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.errors import ConfigError, ConfigIssue

ALLOW_ENV = "GATEWAY_CONFIG_ENV_ALLOW"
# Shorter values are not scrubbed from free text: they are no secret, and replacing every `80`
# or `yes` in a message would garble it. Values at their own YAML path are always templated.
MIN_SCRUBBED = 4

# `$${` is an escaped literal `${`; otherwise `${NAME}` or `${NAME:-default}`.
VARIABLE = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
WHOLE_VARIABLE = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*(?::-[^}]*)?\}$")

Location = tuple[str | int, ...]


def format_path(location: Location) -> str:
    out = ""
    for part in location:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


@dataclass(frozen=True, slots=True)
class Substitutions:
    """Where a config read the environment, and how to hide what it read."""

    templates: Mapping[Location, str] = field(default_factory=dict)  # path → value as written
    values: tuple[tuple[str, str], ...] = ()  # (value read, `${NAME}`), longest value first

    def scrub(self, text: str) -> str:
        """`text` with every value read from the environment replaced by its `${NAME}`."""
        for value, placeholder in self.values:
            if value in text:
                text = text.replace(value, placeholder)
            quoted = repr(value)[1:-1]  # as it appears inside a `{name!r}`
            if quoted != value and quoted in text:
                text = text.replace(quoted, placeholder)
        return text

    def scrub_tree(self, node: Any) -> Any:
        """A JSON-like tree with every string scrubbed (keys included)."""
        if not self.values:
            return node
        if isinstance(node, str):
            return self.scrub(node)
        if isinstance(node, dict):
            return {self.scrub_tree(k): self.scrub_tree(v) for k, v in node.items()}
        if isinstance(node, list | tuple):
            return [self.scrub_tree(v) for v in node]
        return node

    def scrub_error(self, error: ConfigError) -> ConfigError:
        return ConfigError([ConfigIssue(i.path, self.scrub(i.message)) for i in error.issues])


def interpolate(
    document: dict[str, Any], environ: Mapping[str, str], issues: list[ConfigIssue]
) -> tuple[dict[str, Any], Substitutions]:
    """The document with variables replaced; unset or disallowed variables become issues."""
    allowed = _allow_list(environ.get(ALLOW_ENV))
    templates: dict[Location, str] = {}
    values: dict[str, str] = {}

    def walk(node: Any, location: Location) -> Any:
        if isinstance(node, dict):
            return {k: walk(v, (*location, str(k))) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v, (*location, i)) for i, v in enumerate(node)]
        if not isinstance(node, str) or "${" not in node:
            return node
        referenced = False

        def substitute(match: re.Match[str]) -> str:
            nonlocal referenced
            if match.group(0) == "$${":
                return "${"
            referenced = True
            name, default = match.group(1), match.group(2)
            if allowed is not None and not any(fnmatch.fnmatchcase(name, p) for p in allowed):
                issues.append(
                    ConfigIssue(
                        format_path(location),
                        f"environment variable {name} is not allowed by {ALLOW_ENV}",
                    )
                )
                return ""
            if name in environ:
                if len(environ[name]) >= MIN_SCRUBBED:
                    values.setdefault(environ[name], f"${{{name}}}")
                return environ[name]
            if default is not None:
                return default
            issues.append(
                ConfigIssue(format_path(location), f"environment variable {name} is not set")
            )
            return ""

        result = VARIABLE.sub(substitute, node)
        if referenced:
            templates[location] = node
        return result

    interpolated = walk(document, ())
    ordered = tuple(sorted(values.items(), key=lambda item: -len(item[0])))
    return interpolated, Substitutions(templates, ordered)


def _allow_list(setting: str | None) -> tuple[str, ...] | None:
    if setting is None:
        return None
    return tuple(p.strip() for p in setting.split(",") if p.strip())
