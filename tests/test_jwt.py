"""JWT bearer verification against keys minted here and a JWKS served by a real local server."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import re
import secrets
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

import pytest
from joserfc import jws, jwt
from joserfc.jwk import ECKey, Key, RSAKey

from gateway.auth.jwt import CANNOT_FETCH, JWTVerifier, TokenIdentity, looks_like_jwt
from gateway.config.schema import JWTConfig
from gateway.errors import Unauthenticated

ISSUER = "https://idp.example.com/realms/main"
AUDIENCE = "model-gateway"
T = TypeVar("T")

RSA = RSAKey.generate_key(2048, parameters={"kid": "rsa-1"})
EC = ECKey.generate_key("P-256", parameters={"kid": "ec-1"})
RSA_NEXT = RSAKey.generate_key(2048, parameters={"kid": "rsa-2"})
EC_NEXT = ECKey.generate_key("P-256", parameters={"kid": "ec-2"})
ATTACKER = RSAKey.generate_key(2048, parameters={"kid": "rsa-1"})  # same kid, different key
ALG = {"RSA": "RS256", "EC": "ES256"}


class JWKSServer:
    """An IdP's JWKS endpoint on 127.0.0.1, in a thread; counts every fetch."""

    def __init__(self, keys: list[Key]) -> None:
        self.keys = keys
        self.fetches = 0
        self.status = 200
        self.body: bytes | None = None  # served instead of the key set when set
        self.delay_s = 0.0
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with owner._lock:
                    owner.fetches += 1
                    keys, status, body, delay = owner.keys, owner.status, owner.body, owner.delay_s
                time.sleep(delay)
                if body is None:
                    body = json.dumps({"keys": [k.as_dict(private=False) for k in keys]}).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/jwks"
        serve = lambda: self._httpd.serve_forever(poll_interval=0.01)  # noqa: E731
        self._thread = threading.Thread(target=serve, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()


@pytest.fixture
def idp() -> Iterator[JWKSServer]:
    server = JWKSServer([RSA, EC])
    yield server
    server.close()


def config_for(idp: JWKSServer | None = None, **changes: Any) -> JWTConfig:
    source = {"jwks_url": idp.url} if idp is not None else {}
    return JWTConfig(issuer=ISSUER, audience=AUDIENCE, **{**source, **changes})


def mint(
    key: Key, alg: str | None = None, header: dict[str, Any] | None = None, **claims: Any
) -> str:
    now = int(time.time())
    payload = {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "iat": now, "exp": now + 300}
    payload.update(claims)
    payload = {name: value for name, value in payload.items() if value is not None}
    alg = alg or ALG[key.key_type]
    return jwt.encode({"alg": alg, "kid": key.kid, **(header or {})}, payload, key, [alg])


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict[str, Any], secret: bytes | None = None, **claims: Any) -> str:
    """A token joserfc refuses to make: unsigned (no secret) or HMAC-signed with `secret`."""
    now = int(time.time())
    payload = {"iss": ISSUER, "aud": AUDIENCE, "sub": "mallory", "exp": now + 300, **claims}
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    signature = (
        b"" if secret is None else hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    )
    return f"{signing_input}.{b64(signature)}"


def with_verifier(
    config: JWTConfig, use: Callable[[JWTVerifier], Awaitable[T]], **options: Any
) -> T:
    async def run() -> T:
        verifier = JWTVerifier(config, **options)
        try:
            return await use(verifier)
        finally:
            await verifier.aclose()

    return asyncio.run(run())


def verify(config: JWTConfig, token: str, **options: Any) -> TokenIdentity:
    return with_verifier(config, lambda v: v.verify(token), **options)


def rejection(config: JWTConfig, token: str) -> str:
    with pytest.raises(Unauthenticated) as caught:
        verify(config, token)
    assert caught.value.status == 401
    return caught.value.message


def pem(key: RSAKey | ECKey) -> str:
    return key.as_pem(private=False).decode()


# --- accepted ------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", [RSA, EC], ids=["RS256", "ES256"])
def test_a_valid_token_names_its_subject_and_groups(idp: JWKSServer, key: Key) -> None:
    token = mint(key, groups=["analysts", "ops"], aud=["other", AUDIENCE])
    identity = verify(config_for(idp), token)
    assert identity.subject == "alice"
    assert identity.groups == ("analysts", "ops")
    assert identity.claims["iss"] == ISSUER
    assert idp.fetches == 1


@pytest.mark.parametrize("key", [RSA, EC], ids=["RS256", "ES256"])
def test_a_pem_public_key_replaces_the_jwks(key: RSAKey | ECKey) -> None:
    identity = verify(config_for(public_key=pem(key)), mint(key, header={"kid": "anything"}))
    assert identity.subject == "alice"


def test_the_key_set_is_fetched_once_and_verdicts_are_cached(idp: JWKSServer) -> None:
    tokens = [mint(RSA, sub=f"user-{i}") for i in range(5)] + [mint(EC)]

    async def use(verifier: JWTVerifier) -> None:
        await verifier.start()
        first = [await verifier.verify(token) for token in tokens]
        again = [await verifier.verify(token) for token in tokens]
        assert [a is b for a, b in zip(first, again, strict=True)] == [True] * len(tokens)

    with_verifier(config_for(idp), use)
    assert idp.fetches == 1


@pytest.mark.parametrize(
    ("claim", "expected"),
    [
        (["a", "b", "a"], ("a", "b")),
        ("a b  c", ("a", "b", "c")),
        ("a,b, c", ("a", "b", "c")),
        (None, ()),
        ({"not": "groups"}, ()),
    ],
)
def test_groups_come_as_a_list_or_a_separated_string(
    idp: JWKSServer, claim: Any, expected: tuple[str, ...]
) -> None:
    assert verify(config_for(idp), mint(RSA, groups=claim)).groups == expected


def test_groups_claim_can_be_a_path_into_nested_claims(idp: JWKSServer) -> None:
    config = config_for(idp, groups_claim="realm_access.roles", subject_claim="email")
    token = mint(EC, realm_access={"roles": ["admin"]}, email="a@example.com")
    identity = verify(config, token)
    assert (identity.subject, identity.groups) == ("a@example.com", ("admin",))


def test_leeway_tolerates_small_clock_skew(idp: JWKSServer) -> None:
    now = int(time.time())
    late = mint(RSA, exp=now - 10, iat=now - 100)
    early = mint(EC, nbf=now + 10)
    for token in (late, early):
        assert verify(config_for(idp, leeway_s=30), token).subject == "alice"
    assert "expired" in rejection(config_for(idp, leeway_s=0), late)
    assert "not valid yet" in rejection(config_for(idp, leeway_s=0), early)


# --- rejected ------------------------------------------------------------------------------------


def _pem_hmac_token() -> str:
    return forge({"alg": "HS256", "typ": "JWT"}, secret=pem(RSA).encode())


REJECTIONS: dict[str, tuple[Callable[[], str], str]] = {
    "alg-none": (lambda: forge({"alg": "none", "kid": "rsa-1"}), "alg 'none'"),
    "alg-not-allowed": (lambda: mint(RSA, alg="PS256"), "'PS256' is not allowed"),
    "hs256-with-public-key": (_pem_hmac_token, "HMAC-signed"),
    "expired": (lambda: mint(RSA, exp=int(time.time()) - 60), "expired"),
    "not-yet-valid": (lambda: mint(RSA, nbf=int(time.time()) + 600), "not valid yet"),
    "issued-in-future": (lambda: mint(RSA, iat=int(time.time()) + 600), "issued in the future"),
    "wrong-issuer": (lambda: mint(EC, iss="https://evil.example.com"), "issuer"),
    "wrong-audience": (lambda: mint(EC, aud="someone-else"), "audience"),
    "audience-list-without-us": (lambda: mint(EC, aud=["x", "y"]), "audience"),
    "no-expiry": (lambda: mint(RSA, exp=None), "lacks required claim.*exp"),
    "no-subject": (lambda: mint(RSA, sub=None), "no subject claim 'sub'"),
    "bad-signature": (lambda: mint(ATTACKER), "signature"),
    "tampered": (lambda: _tamper(mint(EC)), "signature"),
    "alg-does-not-fit-key": (lambda: mint(EC, header={"kid": "rsa-1"}), "does not fit"),
    "not-a-jwt": (lambda: "gw-not-a-jwt", "Malformed"),
    "garbage-segments": (lambda: "abc.def.ghi", "Malformed"),
    "payload-not-json": (lambda: _signed_payload(b"[1, 2"), "Malformed"),
    "payload-not-object": (lambda: _signed_payload(b"[1, 2]"), "Malformed"),
}


def _tamper(token: str) -> str:
    header, _, signature = token.split(".")
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "root", "exp": int(time.time()) + 300}
    return f"{header}.{b64(json.dumps(claims).encode())}.{signature}"


def _signed_payload(payload: bytes) -> str:
    return jws.serialize_compact({"alg": "RS256", "kid": "rsa-1"}, payload, RSA)


@pytest.mark.parametrize("case", list(REJECTIONS))
def test_each_invalid_token_is_a_401_saying_why(idp: JWKSServer, case: str) -> None:
    make, message = REJECTIONS[case]
    assert re.search(message, rejection(config_for(idp), make()))


def test_an_hmac_token_keyed_with_the_configured_pem_is_rejected() -> None:
    token = _pem_hmac_token()
    message = rejection(config_for(public_key=pem(RSA), algorithms=("RS256",)), token)
    assert "HMAC-signed" in message


def test_unknown_kid_is_rejected_after_one_refetch(idp: JWKSServer) -> None:
    async def use(verifier: JWTVerifier) -> None:
        await verifier.start()
        with pytest.raises(Unauthenticated, match="'rsa-2' is not one of the issuer's"):
            await verifier.verify(mint(RSA_NEXT))

    with_verifier(config_for(idp, jwks_refresh_min_interval_s=0), use)
    assert idp.fetches == 2  # the first load, then one refetch for the unknown kid


def test_a_config_allowing_hmac_or_none_is_refused() -> None:
    for algorithms in [("RS256", "HS256"), ("none",), ("XX999",), ()]:
        with pytest.raises(ValueError):
            JWTVerifier(config_for(public_key=pem(RSA), algorithms=algorithms))
    with pytest.raises(ValueError, match="exactly one"):
        JWTVerifier(config_for())
    with pytest.raises(ValueError, match="PEM"):
        JWTVerifier(config_for(public_key=RSA.as_pem(private=True).decode()))
    with pytest.raises(ValueError, match="fits none"):
        JWTVerifier(config_for(public_key=pem(EC), algorithms=("RS256",)))


# --- key rotation, floods, outages ---------------------------------------------------------------


def test_rotation_adds_a_key_then_withdraws_the_old_one(idp: JWKSServer) -> None:
    idp.keys = [RSA]
    old = mint(RSA)

    async def use(verifier: JWTVerifier) -> None:
        assert (await verifier.verify(old)).subject == "alice"
        idp.keys = [RSA, RSA_NEXT]
        assert (await verifier.verify(mint(RSA_NEXT))).subject == "alice"
        assert idp.fetches == 2
        assert (await verifier.verify(mint(RSA, sub="bob"))).subject == "bob"  # still valid
        assert idp.fetches == 2
        idp.keys = [RSA_NEXT, EC_NEXT]
        assert (await verifier.verify(mint(EC_NEXT))).subject == "alice"  # the next refetch
        assert idp.fetches == 3
        with pytest.raises(Unauthenticated, match="'rsa-1' is not one of"):
            await verifier.verify(mint(RSA, sub="carol"))
        # Withdrawing a key also drops the verdicts cached for the tokens it signed.
        with pytest.raises(Unauthenticated, match="'rsa-1' is not one of"):
            await verifier.verify(old)

    with_verifier(config_for(idp, jwks_refresh_min_interval_s=0), use)
    assert idp.fetches == 5  # and one refetch for each rejected unknown kid


def test_an_old_key_set_is_revalidated_in_the_background(idp: JWKSServer) -> None:
    token = mint(RSA)

    async def use(verifier: JWTVerifier) -> None:
        assert (await verifier.verify(token)).subject == "alice"
        idp.keys = [EC]  # the IdP withdraws rsa-1 and says nothing
        assert (await verifier.verify(token)).subject == "alice"  # the key set is fresh
        await asyncio.sleep(0.3)
        await verifier.verify(mint(EC))  # past its max age: starts a refetch, not waiting
        for _ in range(200):
            try:
                await verifier.verify(token)  # a cache hit until the refetch lands
            except Unauthenticated as exc:
                assert "'rsa-1' is not one of" in exc.message
                break
            await asyncio.sleep(0.01)
        else:
            pytest.fail("the token signed by a withdrawn key is still accepted")
        assert idp.fetches == 2

    config = config_for(idp, jwks_refresh_min_interval_s=0.2)
    with_verifier(config, use, jwks_max_age_s=0.2)


def test_a_flood_of_unknown_kids_costs_one_fetch_per_interval(idp: JWKSServer) -> None:
    interval = 0.5
    idp.delay_s = 0.05  # concurrent refetches must overlap the one in flight
    # Minted up front: signing takes time, and the second flood must land within the interval.
    floods = [[mint(RSA, header={"kid": secrets.token_hex(8)}) for _ in range(100)] for _ in "abc"]

    async def flood(verifier: JWTVerifier, tokens: list[str]) -> None:
        results = await asyncio.gather(*map(verifier.verify, tokens), return_exceptions=True)
        assert all(isinstance(r, Unauthenticated) for r in results)

    async def use(verifier: JWTVerifier) -> None:
        await verifier.start()
        await asyncio.sleep(interval)
        await flood(verifier, floods[0])
        assert idp.fetches == 2  # the start, then one refetch shared by all 100
        await flood(verifier, floods[1])
        assert idp.fetches == 2  # within the interval: none at all
        await asyncio.sleep(interval)
        await flood(verifier, floods[2])
        assert idp.fetches == 3

    with_verifier(config_for(idp, jwks_refresh_min_interval_s=interval), use)


def test_concurrent_refetches_coalesce_even_without_an_interval(idp: JWKSServer) -> None:
    idp.delay_s = 0.05

    async def use(verifier: JWTVerifier) -> None:
        tokens = [mint(RSA, header={"kid": f"k{i}"}) for i in range(50)]
        await asyncio.gather(*map(verifier.verify, tokens), return_exceptions=True)

    with_verifier(config_for(idp, jwks_refresh_min_interval_s=0), use)
    assert idp.fetches == 1


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize("failure", ["refused", "http-500", "not-json", "no-keys"])
def test_an_unreachable_or_broken_jwks_is_a_401(idp: JWKSServer, failure: str) -> None:
    config = config_for(idp)
    if failure == "refused":
        config = config_for(jwks_url=f"http://127.0.0.1:{_closed_port()}/jwks")
    elif failure == "http-500":
        idp.status = 500
    elif failure == "not-json":
        idp.body = b"<html>oops</html>"
    else:
        idp.body = b'{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}'
    assert rejection(config, mint(RSA)) == CANNOT_FETCH


def test_the_verifier_recovers_when_the_jwks_comes_back(idp: JWKSServer) -> None:
    idp.status = 503
    interval = 0.3
    token = mint(EC)

    async def use(verifier: JWTVerifier) -> None:
        await verifier.start()  # logs the failure, raises nothing
        with pytest.raises(Unauthenticated, match="Cannot fetch signing keys"):
            await verifier.verify(token)
        assert idp.fetches == 1  # not retried within the interval
        idp.status = 200
        await asyncio.sleep(interval)
        assert (await verifier.verify(token)).subject == "alice"

    with_verifier(config_for(idp, jwks_refresh_min_interval_s=interval), use)
    assert idp.fetches == 2


# --- cache and detection -------------------------------------------------------------------------


def test_an_expired_token_is_not_served_from_the_cache(idp: JWKSServer) -> None:
    now = [time.time()]
    token = mint(RSA, exp=int(now[0]) + 60)

    async def use(verifier: JWTVerifier) -> None:
        first = await verifier.verify(token)
        assert await verifier.verify(token) is first  # a cache hit
        now[0] += 60 + 30  # past exp + leeway
        with pytest.raises(Unauthenticated, match="expired"):
            await verifier.verify(token)

    with_verifier(config_for(idp), use, clock=lambda: now[0])


def test_the_cache_is_bounded(idp: JWKSServer) -> None:
    tokens = [mint(EC, sub=f"u{i}") for i in range(3)]

    async def use(verifier: JWTVerifier) -> None:
        identities = [await verifier.verify(token) for token in tokens]
        assert await verifier.verify(tokens[2]) is identities[2]
        assert await verifier.verify(tokens[0]) is not identities[0]  # evicted: verified afresh

    with_verifier(config_for(idp), use, cache_size=2)


def test_looks_like_jwt_tells_tokens_from_api_keys() -> None:
    assert looks_like_jwt(mint(RSA).encode())
    assert looks_like_jwt(forge({"alg": "none"}).encode())  # so that verify() can name it
    assert not looks_like_jwt(b"gw-" + secrets.token_urlsafe(32).encode())
    assert not looks_like_jwt(b"a.b")
    assert not looks_like_jwt(f"{b64(b'not json')}.e30.c2ln".encode())
    no_alg = b64(b'{"typ": "JWT"}')
    assert not looks_like_jwt(f"{no_alg}.e30.c2ln".encode())
    assert not looks_like_jwt(b"ey J.e30.c2ln")
