"""Who is calling and what they may do: API keys, group policy and (optionally) JWT subjects,
resolved once per config version.

A principal's allowed endpoints are its key's globs when the key sets them, else the union of its
groups' globs (a group that sets none allows every endpoint); its roles are the key's and its
groups'. A JWT subject gets the policy of the configured groups its token names, and nothing when
it names none: tokens from an IdP are not trusted with more than the config grants.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from fnmatch import translate
from typing import TYPE_CHECKING, Literal

from gateway.config.schema import AuthConfig, GroupConfig, KeyConfig
from gateway.errors import PermissionDenied, Unauthenticated

if TYPE_CHECKING:
    from gateway.auth.jwt import JWTVerifier

KEY_PREFIX = "gw-"
MATCH_NOTHING = re.compile("(?!)")


def new_key() -> str:
    """A fresh key: 32 random bytes, URL-safe, with a prefix that secret scanners can spot."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Principal:
    """A configured key, a JWT subject, or `anonymous` on an open gateway."""

    id: str
    kind: Literal["key", "jwt", "anonymous"]
    roles: frozenset[str]
    groups: tuple[str, ...]
    endpoint_pattern: re.Pattern[str] | None  # None: every endpoint
    digest: str = ""  # keys only
    # Answers per endpoint name, filled lazily; the snapshot it lives in dies with its config.
    _allowed: dict[str, bool] = field(default_factory=dict, compare=False, repr=False)

    @property
    def metrics_label(self) -> str:
        """Bounded by the config: key ids are; JWT subjects are not, so they share one label."""
        return self.id if self.kind != "jwt" else "jwt"

    def may_call(self, endpoint: str) -> bool:
        allowed = self._allowed.get(endpoint)
        if allowed is None:
            allowed = self.endpoint_pattern is None or bool(self.endpoint_pattern.match(endpoint))
            self._allowed[endpoint] = allowed
        return allowed


def _glob_pattern(globs: Iterable[str]) -> re.Pattern[str]:
    translated = [f"(?:{translate(glob)})" for glob in globs]
    return re.compile("|".join(translated)) if translated else MATCH_NOTHING


def _group_policy(
    names: Iterable[str], groups: Mapping[str, GroupConfig]
) -> tuple[re.Pattern[str] | None, frozenset[str]]:
    """Endpoints (None: all) and roles granted by the named groups."""
    globs: list[str] = []
    roles: set[str] = set()
    unrestricted = False
    for name in names:
        group = groups[name]
        roles.update(group.roles)
        if group.endpoints is None:
            unrestricted = True
        else:
            globs += group.endpoints
    return (None if unrestricted else _glob_pattern(globs)), frozenset(roles)


def _key_principal(key: KeyConfig, groups: Mapping[str, GroupConfig]) -> Principal:
    digest = key.sha256 or key_digest(key.key.get_secret_value())  # type: ignore[union-attr]
    group_pattern, group_roles = _group_policy(key.groups, groups)
    if key.endpoints is not None:
        pattern: re.Pattern[str] | None = _glob_pattern(key.endpoints)
    elif key.groups:
        pattern = group_pattern
    else:
        pattern = None
    return Principal(
        id=key.id,
        kind="key",
        roles=frozenset(key.roles) | group_roles,
        groups=key.groups,
        endpoint_pattern=pattern,
        digest=digest,
    )


# An open gateway (no auth section) is a development setup: every caller may do everything.
ANONYMOUS = Principal(
    id="anonymous",
    kind="anonymous",
    roles=frozenset({"user", "admin"}),
    groups=(),
    endpoint_pattern=None,
)


class KeyRing:
    """The configured keys by digest, group policy, and the JWT verifier when configured.

    `auth=None` in the config means an open gateway.
    """

    def __init__(
        self,
        auth: AuthConfig | None,
        groups: Mapping[str, GroupConfig] | None = None,
        jwt: JWTVerifier | None = None,
    ) -> None:
        self.open = auth is None
        self._groups = dict(groups or {})
        self.jwt = jwt
        keys = () if auth is None else auth.keys
        self._by_digest = {p.digest: p for p in (_key_principal(k, self._groups) for k in keys)}
        # JWT policies by the (configured) groups a token names: bounded by the config.
        self.jwt_policies: dict[tuple[str, ...], tuple[re.Pattern[str] | None, frozenset[str]]] = {}

    async def authenticate(self, authorization: bytes | None, api_key: bytes | None) -> Principal:
        if self.open:
            return ANONYMOUS
        presented = _presented_key(authorization, api_key)
        if presented is None:
            raise Unauthenticated(
                "Missing API key: send 'Authorization: Bearer <key>' or 'x-api-key: <key>'."
            )
        if self.jwt is not None and presented.count(b".") == 2:
            from gateway.auth.jwt import looks_like_jwt

            if looks_like_jwt(presented):
                return await self._jwt_principal(presented)
        return self.key_principal(presented)

    def key_principal(self, presented: bytes) -> Principal:
        digest = hashlib.sha256(presented).hexdigest()
        # The dict lookup is keyed by the SHA-256 of the key, so its timing can only reveal
        # facts about a digest, never about a key; the final comparison is constant-time.
        principal = self._by_digest.get(digest)
        if principal is None or not hmac.compare_digest(principal.digest, digest):
            raise Unauthenticated("Invalid API key.")
        return principal

    async def _jwt_principal(self, token: bytes) -> Principal:
        assert self.jwt is not None
        identity = await self.jwt.verify(token.decode("ascii"))
        known = tuple(sorted(g for g in set(identity.groups) if g in self._groups))
        policy = self.jwt_policies.get(known)
        if policy is None:
            pattern, roles = (
                _group_policy(known, self._groups) if known else (MATCH_NOTHING, frozenset())
            )
            policy = self.jwt_policies[known] = (pattern, roles | {"user"})
        return Principal(
            id=identity.subject,
            kind="jwt",
            roles=policy[1],
            groups=known,
            endpoint_pattern=policy[0],
        )

    @staticmethod
    def authorize(principal: Principal, endpoint: str) -> None:
        if not principal.may_call(endpoint):
            who = "Key" if principal.kind == "key" else "Subject"
            raise PermissionDenied(
                f"{who} {principal.id!r} is not allowed to call endpoint {endpoint!r}."
            )

    async def aclose(self) -> None:
        if self.jwt is not None:
            await self.jwt.aclose()


def _presented_key(authorization: bytes | None, api_key: bytes | None) -> bytes | None:
    if authorization:
        scheme, _, credentials = authorization.partition(b" ")
        if scheme.lower() == b"bearer" and credentials.strip():
            return credentials.strip()
    if api_key and api_key.strip():
        return api_key.strip()
    return None
