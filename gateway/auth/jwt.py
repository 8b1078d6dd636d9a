"""OIDC / JWT bearer tokens: signature and claims checked against the issuer's keys.

Keys come from the issuer's JWKS (fetched lazily, cached, refetched when a token names an unknown
`kid`) or from one configured PEM public key. Only asymmetric algorithms are ever accepted: the
config has no shared secret, so an HS* token can only be a forgery, typically the classic one that
uses the published public key as an HMAC secret. Every rejection is an `Unauthenticated` (401)
with a message saying which check failed; a JWKS outage is a 401 too, never a 500.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import aiohttp
import orjson
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from joserfc import jwt
from joserfc.errors import (
    BadSignatureError,
    ClaimError,
    ExpiredTokenError,
    InvalidKeyCurveError,
    InvalidKeyTypeError,
    JoseError,
    KeyParameterError,
    MissingClaimError,
)
from joserfc.jwk import ECKey, Key, OKPKey, RSAKey, import_key
from joserfc.jws import JWSRegistry

from gateway.config.schema import JWTConfig
from gateway.errors import Unauthenticated

logger = logging.getLogger(__name__)

FETCH_TIMEOUT_S = 3.0  # a slow IdP must not hold requests for long: they fail and retry later
JWKS_MAX_AGE_S = 600.0  # a key the IdP withdrew stops working at most this long after
MAX_JWKS_BYTES = 1024 * 1024
MAX_HEADER_CHARS = 2048  # joserfc rejects headers over 512 bytes anyway; this bounds our peek
DEFAULT_CACHE_SIZE = 10_000
CANNOT_FETCH = "Cannot fetch signing keys from the token issuer; try again later."
_SEGMENT = re.compile(rb"[A-Za-z0-9_-]+")
_SIGNATURE = re.compile(rb"[A-Za-z0-9_-]*")  # empty for alg "none", which verify() names
_GROUP_SEPARATORS = re.compile(r"[\s,]+")

SessionFactory = Callable[[], aiohttp.ClientSession]


@dataclass(frozen=True, slots=True)
class TokenIdentity:
    """Who a verified token speaks for."""

    subject: str
    groups: tuple[str, ...]
    claims: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class _KeySet:
    by_kid: Mapping[str, Key]
    all: tuple[Key, ...]


def looks_like_jwt(credential: bytes) -> bool:
    """Cheap test to tell a JWT from an API key: three base64url segments, the first a JSON
    header with "alg". Says nothing about validity."""
    return _peek_header(credential) is not None


class JWTVerifier:
    """Verifies bearer JWTs for one `JWTConfig`; one instance per config version.

    `http` returns the aiohttp session used to fetch the JWKS, called on first fetch (so the
    verifier may be built outside the event loop); the session stays its owner's. Without it the
    verifier opens its own session lazily and closes it in `aclose()`. `clock` (epoch seconds) is
    what exp/nbf/iat are checked against. A key set older than `jwks_max_age_s` is refetched in
    the background, so that withdrawn keys (and the cached tokens they signed) stop working.
    """

    def __init__(
        self,
        config: JWTConfig,
        http: SessionFactory | None = None,
        *,
        clock: Callable[[], float] = time.time,
        cache_size: int = DEFAULT_CACHE_SIZE,
        jwks_max_age_s: float = JWKS_MAX_AGE_S,
    ) -> None:
        if (config.jwks_url is None) == (config.public_key is None):
            raise ValueError("set exactly one of jwks_url and public_key")
        self._config = config
        self._http = http
        self._own_session: aiohttp.ClientSession | None = None
        self._clock = clock
        self._algorithms = _checked_algorithms(config.algorithms)
        # Unknown non-critical header parameters (IdPs add their own) must be ignored (RFC 7515
        # §4); keys are never taken from a token's own jku/jwk/x5u headers, only from our set.
        self._registry = JWSRegistry(algorithms=self._algorithms, strict_check_header=False)
        self._leeway = math.ceil(config.leeway_s)  # joserfc counts whole seconds
        self._claims = jwt.JWTClaimsRegistry(
            now=lambda: int(self._clock()),
            leeway=self._leeway,
            iss={"essential": True, "value": config.issuer},
            aud={"essential": True, "value": config.audience},
            exp={"essential": True},  # a token without expiry would be valid forever
        )
        self._static_key = None if config.public_key is None else _pem_key(config.public_key)
        if self._static_key is not None and not JWSRegistry.filter_algorithms(
            self._static_key, list(self._algorithms)
        ):
            raise ValueError(f"public_key fits none of the algorithms {self._algorithms}")
        self._keys: _KeySet | None = None
        self._fetching: asyncio.Task[None] | None = None
        self._attempted_at: float | None = None  # monotonic time of the last fetch's start
        self._loaded_at = 0.0  # monotonic time of the last successful fetch
        self._max_age_s = jwks_max_age_s
        self._fetch_failed = False
        # Verified tokens by their exact text, until their exp: a hit skips the signature check.
        self._cache: OrderedDict[str, tuple[TokenIdentity, float]] = OrderedDict()
        self._cache_size = cache_size

    async def start(self) -> None:
        """Fetch the JWKS now rather than on the first token; a failure is logged, not raised."""
        if self._static_key is None and self._keys is None:
            await self._refresh()

    async def verify(self, token: str) -> TokenIdentity:
        """The identity a valid token names, or `Unauthenticated` saying which check failed."""
        if self._keys is not None and time.monotonic() - self._loaded_at > self._max_age_s:
            self._start_fetch()  # revalidate in the background; this token uses the keys at hand
        cached = self._cache.get(token)
        if cached is not None:
            identity, exp = cached
            if exp > self._clock() - self._leeway:
                self._cache.move_to_end(token)
                return identity
            del self._cache[token]  # expired: verify again, to fail with the usual message
        header = _peek_header(token.encode("utf-8", "replace"))
        if header is None:
            raise Unauthenticated("Malformed bearer token: not a signed JWT.")
        alg = header["alg"]
        self._check_alg(alg)
        key = await self._key_for(header)
        try:
            decoded = jwt.decode(token, key, registry=self._registry)
        except BadSignatureError as exc:
            raise Unauthenticated("Invalid token signature.") from exc
        except (InvalidKeyTypeError, InvalidKeyCurveError, KeyParameterError) as exc:
            raise Unauthenticated(f"Token algorithm {alg!r} does not fit its signing key.") from exc
        except (JoseError, ValueError, TypeError) as exc:
            raise Unauthenticated(f"Malformed bearer token: {exc}") from exc
        claims = decoded.claims
        self._check_claims(claims)
        identity = self._identity(claims)
        self._remember(token, identity, claims["exp"])
        return identity

    async def aclose(self) -> None:
        if self._fetching is not None:
            self._fetching.cancel()
            await asyncio.gather(self._fetching, return_exceptions=True)
        if self._own_session is not None:
            await self._own_session.close()
            self._own_session = None

    # --- checks ----------------------------------------------------------------------------------

    def _check_alg(self, alg: str) -> None:
        if alg.lower() == "none":
            raise Unauthenticated("Unsigned tokens (alg 'none') are not accepted.")
        if alg.upper().startswith("HS"):
            raise Unauthenticated(
                f"HMAC-signed tokens (alg {_clip(alg)}) are not accepted:"
                " tokens must be signed with the issuer's private key."
            )
        if alg not in self._algorithms:
            raise Unauthenticated(
                f"Token algorithm {_clip(alg)} is not allowed; accepted: "
                + ", ".join(self._algorithms)
                + "."
            )

    def _check_claims(self, claims: dict[str, Any]) -> None:
        try:
            self._claims.validate(claims)
        except ExpiredTokenError as exc:
            raise Unauthenticated("Token has expired.") from exc
        except MissingClaimError as exc:
            missing = exc.claim.replace(",", ", ")
            raise Unauthenticated(f"Token lacks required claim(s): {missing}.") from exc
        except ClaimError as exc:
            raise Unauthenticated(self._claim_message(exc.claim)) from exc

    def _claim_message(self, claim: str) -> str:
        if claim == "iss":
            return f"Token issuer is not the expected {self._config.issuer!r}."
        if claim == "aud":
            return f"Token audience does not include {self._config.audience!r}."
        if claim == "nbf":
            return "Token is not valid yet (nbf is in the future)."
        if claim == "iat":
            return "Token was issued in the future (iat)."
        return f"Token claim {_clip(claim)} is invalid."

    def _identity(self, claims: dict[str, Any]) -> TokenIdentity:
        subject = claims.get(self._config.subject_claim)
        if not isinstance(subject, str) or not subject:
            raise Unauthenticated(f"Token has no subject claim {self._config.subject_claim!r}.")
        groups = _groups(_claim(claims, self._config.groups_claim))
        return TokenIdentity(subject, groups, MappingProxyType(claims))

    def _remember(self, token: str, identity: TokenIdentity, exp: float) -> None:
        if self._cache_size <= 0:
            return
        self._cache[token] = (identity, exp)
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    # --- keys ------------------------------------------------------------------------------------

    async def _key_for(self, header: dict[str, Any]) -> Key:
        if self._static_key is not None:
            return self._static_key  # a PEM key has no kid: whatever the token names, this one
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise Unauthenticated("Malformed bearer token: 'kid' is not a string.")
        keys = self._keys
        if keys is None or (kid is not None and kid not in keys.by_kid):
            await self._refresh()
            keys = self._keys
            if keys is None:
                raise Unauthenticated(CANNOT_FETCH)
        if kid is None:
            if len(keys.all) == 1:
                return keys.all[0]
            raise Unauthenticated("Token names no signing key ('kid'); the issuer has several.")
        key = keys.by_kid.get(kid)
        if key is None:
            if self._fetch_failed:
                raise Unauthenticated(CANNOT_FETCH)
            raise Unauthenticated(f"Token signing key {_clip(kid)} is not one of the issuer's.")
        return key

    async def _refresh(self) -> None:
        """Refetch the JWKS, unless a fetch is in flight (then wait for that one) or the last one
        began under `jwks_refresh_min_interval_s` ago: a flood of made-up kids costs the IdP at
        most one fetch per interval."""
        task = self._start_fetch()
        if task is not None:
            # Shielded: a waiting request that is cancelled must not cancel the others' fetch.
            await asyncio.shield(task)

    def _start_fetch(self) -> asyncio.Task[None] | None:
        """The fetch in flight, else a new one; None if the last began too recently."""
        if self._fetching is None:
            now = time.monotonic()
            interval = self._config.jwks_refresh_min_interval_s
            if self._attempted_at is not None and now - self._attempted_at < interval:
                return None
            self._attempted_at = now
            self._fetching = asyncio.create_task(self._fetch())
        return self._fetching

    async def _fetch(self) -> None:
        url = self._config.jwks_url
        assert url is not None
        try:
            async with asyncio.timeout(FETCH_TIMEOUT_S):
                async with self._session().get(url, headers={"accept": "application/json"}) as r:
                    if r.status != 200:
                        raise ValueError(f"HTTP {r.status}")
                    body = await _read_limited(r, MAX_JWKS_BYTES)
            keys = _parse_jwks(body)
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            logger.warning(
                "cannot fetch signing keys from %s: %s", url, str(exc) or type(exc).__name__
            )
            self._fetch_failed = True
            return
        finally:
            self._fetching = None
        previous = self._keys
        if previous is not None and not previous.by_kid.keys() <= keys.by_kid.keys():
            # A key was withdrawn (perhaps compromised): tokens it signed must not live on here.
            self._cache.clear()
        self._keys = keys
        self._loaded_at = time.monotonic()
        self._fetch_failed = False

    def _session(self) -> aiohttp.ClientSession:
        if self._http is not None:
            return self._http()
        if self._own_session is None or self._own_session.closed:
            self._own_session = aiohttp.ClientSession()
        return self._own_session


# --- helpers -------------------------------------------------------------------------------------


def _peek_header(credential: bytes) -> dict[str, Any] | None:
    if credential.count(b".") != 2:
        return None
    head, payload, signature = credential.split(b".")
    if (
        len(head) > MAX_HEADER_CHARS
        or not _SEGMENT.fullmatch(head)
        or not _SEGMENT.fullmatch(payload)
        or not _SIGNATURE.fullmatch(signature)
    ):
        return None
    try:
        header = orjson.loads(base64.urlsafe_b64decode(head + b"=" * (-len(head) % 4)))
    except (binascii.Error, ValueError):
        return None
    if not isinstance(header, dict) or not isinstance(header.get("alg"), str):
        return None
    return header


def _checked_algorithms(algorithms: tuple[str, ...]) -> tuple[str, ...]:
    for alg in algorithms:
        if alg.lower() == "none" or alg.upper().startswith("HS"):
            raise ValueError(
                f"algorithm {alg!r} cannot be allowed: only asymmetric signatures are verified"
            )
        if alg not in JWSRegistry.algorithms:
            raise ValueError(f"unknown JWS algorithm {alg!r}")
    if not algorithms:
        raise ValueError("algorithms is empty")
    return algorithms


def _pem_key(pem: str) -> Key:
    data = pem.strip().encode()
    native: object
    try:
        if b"CERTIFICATE" in data:
            native = x509.load_pem_x509_certificate(data).public_key()
        else:
            native = load_pem_public_key(data)
    except ValueError as exc:
        raise ValueError("public_key is not a PEM public key or certificate") from exc
    if isinstance(native, rsa.RSAPublicKey):
        return RSAKey.import_key(data)
    if isinstance(native, ec.EllipticCurvePublicKey):
        return ECKey.import_key(data)
    if isinstance(native, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return OKPKey.import_key(data)
    raise ValueError(f"public_key has an unsupported key type ({type(native).__name__})")


def _parse_jwks(body: bytes) -> _KeySet:
    document = orjson.loads(body)
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise ValueError("the JWKS has no 'keys' list")
    keys: list[Key] = []
    for entry in entries:
        # Symmetric ("oct") keys have no business in a public key set; "enc" keys sign nothing.
        if not isinstance(entry, dict) or entry.get("kty") not in ("RSA", "EC", "OKP"):
            continue
        if entry.get("use", "sig") != "sig":
            continue
        try:
            keys.append(import_key(entry))
        except (JoseError, ValueError, TypeError) as exc:
            logger.warning("skipping an unusable key %r in the JWKS: %s", entry.get("kid"), exc)
    if not keys:
        raise ValueError("the JWKS has no usable signing keys")
    by_kid = {key.kid: key for key in keys if key.kid is not None}
    return _KeySet(by_kid=MappingProxyType(by_kid), all=tuple(keys))


async def _read_limited(response: aiohttp.ClientResponse, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise ValueError(f"the JWKS exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _claim(claims: Mapping[str, Any], name: str) -> Any:
    """A claim by name, or by a dotted path into nested objects (Keycloak's
    `realm_access.roles`) when no claim has the literal name (some names are URLs, with dots)."""
    if name in claims or "." not in name:
        return claims.get(name)
    value: Any = claims
    for part in name.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _groups(value: Any) -> tuple[str, ...]:
    # Absent or of an unexpected type: no groups, which grants nothing (the safe reading).
    if isinstance(value, str):
        names = [name for name in _GROUP_SEPARATORS.split(value) if name]
    elif isinstance(value, list):
        names = [name for name in value if isinstance(name, str) and name]
    else:
        return ()
    return tuple(dict.fromkeys(names))


def _clip(value: str, limit: int = 64) -> str:
    """A client-supplied value quoted for an error message, cut so it cannot flood logs."""
    return repr(value if len(value) <= limit else value[:limit] + "...")
