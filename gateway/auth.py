"""API-key authentication and per-key endpoint access, resolved once per config version."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass, field
from fnmatch import translate

from gateway.config import AuthConfig, KeyConfig
from gateway.errors import PermissionDenied, Unauthenticated

KEY_PREFIX = "gw-"


def new_key() -> str:
    """A fresh key: 32 random bytes, URL-safe, with a prefix that secret scanners can spot."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a configured key (later also a JWT subject)."""

    id: str
    roles: frozenset[str]
    groups: tuple[str, ...]
    digest: str
    endpoint_pattern: re.Pattern[str] | None  # None: every endpoint
    # Answers per endpoint name, filled lazily; the snapshot it lives in dies with its config.
    _allowed: dict[str, bool] = field(default_factory=dict, compare=False, repr=False)

    def may_call(self, endpoint: str) -> bool:
        allowed = self._allowed.get(endpoint)
        if allowed is None:
            allowed = self.endpoint_pattern is None or bool(self.endpoint_pattern.match(endpoint))
            self._allowed[endpoint] = allowed
        return allowed


def _principal(key: KeyConfig) -> Principal:
    digest = key.sha256 or key_digest(key.key.get_secret_value())  # type: ignore[union-attr]
    pattern = None
    if key.endpoints is not None:
        pattern = re.compile("|".join(f"(?:{translate(glob)})" for glob in key.endpoints) or "(?!)")
    return Principal(
        id=key.id,
        roles=frozenset(key.roles),
        groups=key.groups,
        digest=digest,
        endpoint_pattern=pattern,
    )


# An open gateway (no auth section) is a development setup: every caller may do everything.
ANONYMOUS = Principal(
    id="anonymous", roles=frozenset({"user", "admin"}), groups=(), digest="", endpoint_pattern=None
)


class KeyRing:
    """The configured keys by digest. `auth=None` in the config means an open gateway."""

    def __init__(self, auth: AuthConfig | None) -> None:
        self.open = auth is None
        self._by_digest = {} if auth is None else {p.digest: p for p in map(_principal, auth.keys)}

    def authenticate(self, authorization: bytes | None, api_key: bytes | None) -> Principal:
        if self.open:
            return ANONYMOUS
        presented = _presented_key(authorization, api_key)
        if presented is None:
            raise Unauthenticated(
                "Missing API key: send 'Authorization: Bearer <key>' or 'x-api-key: <key>'."
            )
        digest = hashlib.sha256(presented).hexdigest()
        # The dict lookup is keyed by the SHA-256 of the key, so its timing can only reveal
        # facts about a digest, never about a key; the final comparison is constant-time.
        principal = self._by_digest.get(digest)
        if principal is None or not hmac.compare_digest(principal.digest, digest):
            raise Unauthenticated("Invalid API key.")
        return principal

    @staticmethod
    def authorize(principal: Principal, endpoint: str) -> None:
        if not principal.may_call(endpoint):
            raise PermissionDenied(
                f"Key {principal.id!r} is not allowed to call endpoint {endpoint!r}."
            )


def _presented_key(authorization: bytes | None, api_key: bytes | None) -> bytes | None:
    if authorization:
        scheme, _, credentials = authorization.partition(b" ")
        if scheme.lower() == b"bearer" and credentials.strip():
            return credentials.strip()
    if api_key and api_key.strip():
        return api_key.strip()
    return None
