"""What the gateway shows of a config (`/admin/config`) and of its parts (`/ready`): no secret.

- `SecretStr` fields are written as `**********` (pydantic does it);
- a value read from the environment is shown as written, `${VAR}`;
- a password in a URL (`postgresql://u:pw@h/db`, `redis://:pw@h`) and a credential in its query
  string (`?key=`, `?token=`, `?api-key=`, `sig=`, …) are masked, in every string;
- every value of an external endpoint's `options` is masked (they hold provider credentials).
"""

from __future__ import annotations

import re
from typing import Any

from gateway.config.interpolation import Location
from gateway.config.loading import LoadedConfig

MASK = "******"

# The password runs to the authority's last `@` (an unescaped `@` in it must not leak its tail).
_USERINFO_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^/?#@:\s]*:)[^/?#\s]*@")
# A query parameter whose name says it carries a credential.
_QUERY_SECRET = re.compile(
    r"(?P<head>[?&;](?:[A-Za-z0-9_.-]*(?:key|token|secret|passw|pwd|sig|auth|cred|session)"
    r"[A-Za-z0-9_.-]*)=)[^&#;\s]*",
    re.IGNORECASE,
)


def mask_url_secrets(text: str) -> str:
    """`text` with URL passwords and credential query parameters replaced by `******`."""
    if "://" not in text and "=" not in text:
        return text
    text = _USERINFO_PASSWORD.sub(lambda m: f"{m['head']}{MASK}@", text)
    return _QUERY_SECRET.sub(lambda m: f"{m['head']}{MASK}", text)


def public_tree(node: Any) -> Any:
    """A JSON-like tree with `mask_url_secrets` applied to every string."""
    if isinstance(node, str):
        return mask_url_secrets(node)
    if isinstance(node, dict):
        return {k: public_tree(v) for k, v in node.items()}
    if isinstance(node, list | tuple):
        return [public_tree(v) for v in node]
    return node


def redacted(loaded: LoadedConfig) -> dict[str, Any]:
    """The config as JSON with every secret masked and every interpolated value as written."""
    dumped: dict[str, Any] = loaded.config.model_dump(mode="json")
    for location, template in loaded.substitutions.templates.items():
        _put(dumped, location, template)
    for endpoint in dumped.get("endpoints", ()):
        if isinstance(endpoint, dict) and isinstance(endpoint.get("options"), dict):
            endpoint["options"] = {name: MASK for name in endpoint["options"]}
    shown: dict[str, Any] = public_tree(loaded.substitutions.scrub_tree(dumped))
    return shown


def describe(loaded: LoadedConfig, node: Any) -> Any:
    """A description of running parts (`describe()` of endpoints) fit to show."""
    return public_tree(loaded.substitutions.scrub_tree(node))


def _put(tree: Any, location: Location, value: str) -> None:
    """Set `tree` at `location` if the path exists (a SecretStr stays masked)."""
    *parents, last = location
    for part in parents:
        if not _has(tree, part):
            return
        tree = tree[part]
    if _has(tree, last) and tree[last] != "**********":
        tree[last] = value


def _has(tree: Any, part: str | int) -> bool:
    if isinstance(tree, dict):
        return isinstance(part, str) and part in tree
    return isinstance(tree, list) and isinstance(part, int) and part < len(tree)
