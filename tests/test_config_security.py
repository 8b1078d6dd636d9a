"""Config security: hostile reload bodies, values read from the environment, what
`/admin/config` shows, settings a reload cannot change, signed reload broadcasts, and errors that
must not quote a remote server."""

from __future__ import annotations

import hashlib
import hmac
import http.server
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from gateway.auth.keys import key_digest
from gateway.config.broadcast import seal
from gateway.config.loading import load_config_file, parse_config
from gateway.config.redaction import redacted
from gateway.errors import ConfigError
from gateway.runtime import build_runtime
from tests.gateway_process import GatewayProcess, run_gateway, write_config

ADMIN = "gw-sec-admin-key-0123456789abcdef"
ENV_VALUE = "env-value-7f2c9a1e-never-shown"  # what GW_SEC_VALUE holds in the gateways
BROADCAST_SECRET = "broadcast-secret-for-tests-" + "0123456789abcdef" * 2
REDIS_URL = os.environ.get("GATEWAY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
ENV = {"GW_SEC_VALUE": ENV_VALUE, "GW_SEC_BROADCAST_SECRET": BROADCAST_SECRET}


def gateway_config(*, auth: bool = True, extra_endpoint: str = "", tail: str = "") -> str:
    admin = f'    - {{id: admin, sha256: "{key_digest(ADMIN)}", roles: [user, admin]}}\n'
    return (
        "registry: {poll_s: 0}\n"
        + (f"auth:\n  keys:\n{admin}" if auth else "")
        + """endpoints:
  - name: chat
    type: foundation
    task: chat
    deployments: [{api_base: "http://127.0.0.1:9/v1", model: m}]
"""
        + extra_endpoint
        + tail
    )


def admin_config(gateway: GatewayProcess) -> dict[str, Any]:
    answer = httpx.get(f"{gateway.url}/admin/config", headers={"authorization": f"Bearer {ADMIN}"})
    assert answer.status_code == 200, answer.text
    state: dict[str, Any] = answer.json()
    return state


def reload(gateway: GatewayProcess, text: str, timeout: float = 60) -> httpx.Response:
    return httpx.post(
        f"{gateway.url}/admin/reload",
        content=text,
        headers={"authorization": f"Bearer {ADMIN}"},
        timeout=timeout,
    )


def wait_for(predicate: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("timed out")


# --- hostile YAML ------------------------------------------------------------------------------

# 304 bytes that expand to 9**7 nodes: before the limits, one reload blocked the loop for 10 s.
ALIAS_BOMB = "a0: &a0 [x,x,x,x,x,x,x,x,x]\n" + "".join(
    f"a{i}: &a{i} [{','.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 7)
)
DEEP = "endpoints: " + "[" * 900 + "]" * 900 + "\n"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (ALIAS_BOMB, "more than 200000 nodes once aliases are expanded"),
        (DEEP, "nested deeper than 64 levels"),
        ("a: &a [*a]\n", "an alias refers to a node that contains it"),
        ("a: &x 1\n" + "".join(f"b{i}: *x\n" for i in range(101)), "more than 100 aliases"),
        (
            "a: &a " + "[" * 60 + "x" + "]" * 60 + "\nb: " + "[" * 10 + "*a" + "]" * 10 + "\n",
            "nested deeper than 64 levels (aliases expanded)",
        ),
        ("x: " + "y" * (1024 * 1024), "over the limit of 1048576"),
    ],
    ids=["alias-bomb", "deep", "recursive", "aliases", "deep-through-alias", "size"],
)
def test_hostile_yaml_is_a_config_error_at_once(text: str, problem: str) -> None:
    started = time.monotonic()
    with pytest.raises(ConfigError) as caught:
        parse_config(text, environ={})
    assert time.monotonic() - started < 1
    (issue,) = caught.value.issues
    assert problem in str(issue)


def test_anchors_and_merge_keys_still_work() -> None:
    loaded = parse_config(
        "groups:\n  a: &g {roles: [admin], limits: {max_concurrent: 2}}\n  b: *g\n"
        "usage: {<<: {durability: fsync}, batch_size: 7}\n",
        environ={},
    )
    assert loaded.config.groups["a"] == loaded.config.groups["b"]
    assert loaded.config.usage.durability == "fsync" and loaded.config.usage.batch_size == 7


def test_a_hostile_reload_is_refused_while_the_gateway_keeps_serving(tmp_path: Path) -> None:
    path = write_config(tmp_path, gateway_config())
    with run_gateway(path, workdir=tmp_path) as gateway:
        before = admin_config(gateway)["version"]
        for text, problem in [(ALIAS_BOMB, "aliases are expanded"), (DEEP, "nested deeper")]:
            answer: dict[str, httpx.Response] = {}
            sender = threading.Thread(
                target=lambda t=text, a=answer: a.update(r=reload(gateway, t))
            )
            started = time.monotonic()
            sender.start()
            slowest = 0.0
            while sender.is_alive() or not slowest:
                sent = time.monotonic()
                assert httpx.get(f"{gateway.url}/live", timeout=3).status_code == 200
                slowest = max(slowest, time.monotonic() - sent)
                time.sleep(0.02)
            sender.join()
            assert time.monotonic() - started < 5
            assert slowest < 1, f"/live took {slowest:.2f}s during the reload"
            refused = answer["r"]
            assert refused.status_code == 400, refused.text
            assert problem in refused.json()["issues"][0]
        assert admin_config(gateway)["version"] == before


# --- values from the environment -----------------------------------------------------------------


def test_environment_values_are_never_echoed(tmp_path: Path) -> None:
    shown = '  - {name: shown, type: external, task: chat, provider: openai, model: "${GW_SEC_VALUE}"}\n'
    path = write_config(tmp_path, gateway_config(extra_endpoint=shown))
    leaky = gateway_config(
        extra_endpoint=shown
        + '  - {name: "${GW_SEC_VALUE}", type: custom, served_models: [{model: ./m}]}\n'
        + '  - {name: other, type: "${GW_SEC_VALUE}"}\n'
        + '  - {name: third, type: foundation, task: chat, fallbacks: ["${GW_SEC_VALUE}"],'
        + ' deployments: [{api_base: "${GW_SEC_VALUE}", model: m}]}\n'
        + '  - {name: fourth, type: foundation, task: "${GW_SEC_VALUE}", deployments: []}\n',
        tail='groups:\n  "g": {roles: ["${GW_SEC_VALUE}"]}\nlimits: {on_store_error: "${GW_SEC_VALUE}"}\n',
    )
    with run_gateway(path, workdir=tmp_path, env=ENV) as gateway:
        refused = reload(gateway, leaky)
        assert refused.status_code == 400
        issues = refused.json()["issues"]
        assert len(issues) >= 6, issues
        assert (
            "endpoints[4].fallbacks[0]: '${GW_SEC_VALUE}' is a custom endpoint;"
            " fallbacks must be LLM endpoints"
        ) in issues
        state = httpx.get(
            f"{gateway.url}/admin/config", headers={"authorization": f"Bearer {ADMIN}"}
        )
        assert state.json()["config"]["endpoints"][1]["model"] == "${GW_SEC_VALUE}"
        ready = httpx.get(f"{gateway.url}/ready")
        for text in (refused.text, state.text, ready.text, gateway.log()):
            assert ENV_VALUE not in text


def test_an_allow_list_limits_the_variables_a_config_reads() -> None:
    text = 'registry_uri: "${GATEWAY_REGISTRY}"\nusage: {spool_dir: "${HOME_DIR}"}\n'
    environ = {"GATEWAY_REGISTRY": "x", "HOME_DIR": "/h", "GATEWAY_CONFIG_ENV_ALLOW": "GATEWAY_*"}
    with pytest.raises(ConfigError) as caught:
        parse_config(text, environ=environ)
    assert [str(i) for i in caught.value.issues] == [
        "usage.spool_dir: environment variable HOME_DIR is not allowed by GATEWAY_CONFIG_ENV_ALLOW"
    ]
    environ["GATEWAY_CONFIG_ENV_ALLOW"] = "GATEWAY_REGISTRY, HOME_DIR"
    assert parse_config(text, environ=environ).config.usage.spool_dir == "/h"


def test_the_broadcast_secret_must_come_from_the_environment() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(f"reload: {{broadcast_secret: {BROADCAST_SECRET}}}\n", environ={})
    (issue,) = caught.value.issues
    assert issue.path == "reload.broadcast_secret" and BROADCAST_SECRET not in str(issue)
    with pytest.raises(ConfigError) as caught:
        parse_config('reload: {broadcast_secret: "${S}"}\n', environ={"S": "short-secret"})
    assert [str(i) for i in caught.value.issues] == [
        "reload.broadcast_secret: must be at least 32 characters"
        " (e.g. the output of `openssl rand -hex 32`)"
    ]


# --- redaction -----------------------------------------------------------------------------------

CREDENTIALS = (
    "redis-pass-123",
    "dep-pass-456",
    "tok-789",
    "ext-pass-000",
    "key-111",
    "opt-secret-222",
    "eu-west-9",
    "reg-pass-333",
    "sig-444",
)


def test_admin_config_masks_url_credentials_and_options(tmp_path: Path) -> None:
    external = """  - name: ext
    type: external
    task: chat
    provider: openai
    model: gpt-4o
    api_base: "https://u:ext-pass-000@api.example/v1?api-key=key-111&sv=2024&sig=sig-444"
    options: {aws_secret_access_key: opt-secret-222, region: eu-west-9}
"""
    text = gateway_config(
        extra_endpoint=external,
        tail='registry_uri: "https://reg-user:reg-pass-333@mlflow.example/"\n'
        'reload: {broadcast: "redis://:redis-pass-123@127.0.0.1:6379/0"}\n',
    ).replace(
        'api_base: "http://127.0.0.1:9/v1"',
        'api_base: "http://dep-user:dep-pass-456@127.0.0.1:9/v1?token=tok-789"',
    )
    path = write_config(tmp_path, text)
    with run_gateway(path, workdir=tmp_path) as gateway:
        state = admin_config(gateway)
        ready = httpx.get(f"{gateway.url}/ready").text
    for credential in CREDENTIALS:
        assert credential not in orjson.dumps(state).decode() and credential not in ready
    config = state["config"]
    assert config["reload"]["broadcast"] == "redis://:******@127.0.0.1:6379/0"
    assert config["registry_uri"] == "https://reg-user:******@mlflow.example/"
    assert config["endpoints"][0]["deployments"][0]["api_base"] == (
        "http://dep-user:******@127.0.0.1:9/v1?token=******"
    )
    assert config["endpoints"][1]["api_base"] == (
        "https://u:******@api.example/v1?api-key=******&sv=2024&sig=******"
    )
    assert config["endpoints"][1]["options"] == {
        "aws_secret_access_key": "******",
        "region": "******",
    }


def test_a_ledger_url_is_shown_as_written_and_masked() -> None:
    loaded = parse_config(
        'usage: {ledger: "postgresql://gw:${DB_PASSWORD}@db.internal/usage"}\n',
        environ={"DB_PASSWORD": "pg-password-555"},
    )
    assert redacted(loaded)["usage"]["ledger"] == "postgresql://gw:******@db.internal/usage"
    assert "pg-password-555" not in orjson.dumps(redacted(loaded)).decode()


# --- settings read at start-up -------------------------------------------------------------------


def test_a_reload_that_changes_a_restart_only_setting_is_refused(tmp_path: Path) -> None:
    path = write_config(tmp_path, gateway_config())
    with run_gateway(path, workdir=tmp_path) as gateway:
        before = admin_config(gateway)
        changed = gateway_config(
            tail=f'limits: {{store: "{REDIS_URL}", on_store_error: allow}}\n'
            "usage: {ledger: sqlite:///elsewhere.db, spool_dir: other-spool}\n"
            "reload: {watch: true}\n"
        )
        refused = reload(gateway, changed)
        assert refused.status_code == 400, refused.text
        assert refused.json()["issues"] == [
            "limits.store: changing it needs a restart; the running gateway keeps memory://",
            "usage.ledger: changing it needs a restart;"
            " the running gateway keeps sqlite:///gateway-usage.db",
            "usage.spool_dir: changing it needs a restart; the running gateway keeps gateway-spool",
            "reload.watch: changing it needs a restart; the running gateway keeps false",
        ]
        after = admin_config(gateway)
        assert after["version"] == before["version"] and after["reloads"] == 0
        assert after["config"]["limits"]["store"] == "memory://"
        # what is read per request or per runtime is reloadable
        applied = reload(gateway, gateway_config(tail="limits: {on_store_error: allow}\n"))
        assert applied.status_code == 200, applied.text
        assert admin_config(gateway)["config"]["limits"]["on_store_error"] == "allow"


# --- reload broadcasts ---------------------------------------------------------------------------


def broadcast_tail(channel: str, *, secret: bool = True) -> str:
    secret_field = ', broadcast_secret: "${GW_SEC_BROADCAST_SECRET}"' if secret else ""
    return f'reload: {{broadcast: "{REDIS_URL}", channel: "{channel}"{secret_field}}}\n'


@pytest.fixture
def redis_client() -> Iterator[object]:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    yield client
    client.close()


def rejected(gateway: GatewayProcess, reason: str) -> float:
    for line in httpx.get(f"{gateway.url}/metrics").text.splitlines():
        if line.startswith(f'gateway_reload_broadcasts_rejected_total{{reason="{reason}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_only_signed_fresh_broadcasts_are_followed(tmp_path: Path, redis_client: object) -> None:
    channel = f"gateway-sec-{os.getpid()}-{time.monotonic_ns()}"
    tail = broadcast_tail(channel)
    text_a = gateway_config(tail=tail)
    text_b = gateway_config(
        tail=tail,
        extra_endpoint="  - {name: chat-b, type: foundation, task: chat,"
        ' deployments: [{api_base: "http://127.0.0.1:9/v1", model: m}]}\n',
    )
    opened = gateway_config(auth=False, tail=tail)  # no auth: what an attacker would send
    secret = BROADCAST_SECRET.encode()
    publish = redis_client.publish  # type: ignore[attr-defined]
    path = write_config(tmp_path, text_a)
    with run_gateway(path, workdir=tmp_path, env=ENV) as gateway:
        wait_for(lambda: redis_client.pubsub_numsub(channel)[0][1] >= 1)  # type: ignore[attr-defined]
        version_a = admin_config(gateway)["version"]
        publish(channel, orjson.dumps({"origin": "attacker", "text": opened}))
        body = orjson.dumps({"origin": "x", "ts": time.time(), "nonce": "n1", "text": opened})
        wrong = hmac.new(b"not-the-secret", channel.encode() + b"\n" + body, hashlib.sha256)
        publish(channel, b"v1." + wrong.hexdigest().encode() + b"." + body)
        publish(channel, seal(secret, channel, "old-replica", opened, now=time.time() - 3600))
        fresh = seal(secret, channel, "replica-2", text_b)
        publish(channel, fresh)  # signed and fresh: followed
        wait_for(lambda: "chat-b" in admin_config(gateway)["endpoints"])
        assert reload(gateway, text_a).status_code == 200
        publish(channel, fresh)  # the same message again must not roll the gateway back
        wait_for(lambda: rejected(gateway, "replayed") == 1)
        assert admin_config(gateway)["version"] == version_a
        assert httpx.get(f"{gateway.url}/admin/config").status_code == 401  # still guarded
        assert [rejected(gateway, r) for r in ("unsigned", "forged", "stale")] == [1, 1, 1]
        publish(channel, b"junk")
        wait_for(lambda: rejected(gateway, "unsigned") == 2)
        log = gateway.log()
    assert log.count("ignored a message (unsigned)") == 1
    assert BROADCAST_SECRET not in log


def test_without_a_secret_reloads_are_neither_followed_nor_published(
    tmp_path: Path, redis_client: object
) -> None:
    channel = f"gateway-sec-off-{os.getpid()}-{time.monotonic_ns()}"
    tail = broadcast_tail(channel, secret=False)
    path = write_config(tmp_path, gateway_config(tail=tail))
    listener = redis_client.pubsub()  # type: ignore[attr-defined]
    listener.subscribe(channel)
    assert listener.get_message(timeout=1)["type"] == "subscribe"
    with run_gateway(path, workdir=tmp_path, env=ENV) as gateway:
        before = admin_config(gateway)["version"]
        opened = gateway_config(auth=False, tail=tail)
        redis_client.publish(channel, orjson.dumps({"origin": "a", "text": opened}))  # type: ignore[attr-defined]
        signed = seal(BROADCAST_SECRET.encode(), channel, "b", opened)
        redis_client.publish(channel, signed)  # type: ignore[attr-defined]
        applied = reload(gateway, gateway_config(tail=tail + "limits: {on_store_error: allow}\n"))
        assert applied.status_code == 200
        time.sleep(0.5)
        assert httpx.get(f"{gateway.url}/admin/config").status_code == 401
        assert admin_config(gateway)["version"] != before
        log = gateway.log()
    published = []
    while (message := listener.get_message(timeout=0.2)) is not None:
        published.append(message["data"])
    listener.close()
    assert published == [orjson.dumps({"origin": "a", "text": opened}), signed]  # only ours
    assert "reload broadcast is OFF" in log and "broadcast_secret" in log


# --- remote errors -------------------------------------------------------------------------------


class _Registry(http.server.BaseHTTPRequestHandler):
    """A registry that answers every request with an error page quoting something private."""

    def do_GET(self) -> None:
        if "alias" in self.path:
            status, body = 400, b"<html>proxy error: upstream-private-detail-666</html>"
        else:
            status = 404
            body = orjson.dumps(
                {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "upstream-private-detail-666"}
            )
        self.send_response(status)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize(
    ("model", "code"),
    [("models:/x@champion", "BAD_REQUEST"), ("models:/x/3", "RESOURCE_DOES_NOT_EXIST")],
)
def test_registry_errors_do_not_quote_the_registry(tmp_path: Path, model: str, code: str) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Registry)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        path = write_config(
            tmp_path,
            f'registry_uri: "http://127.0.0.1:{server.server_port}"\n'
            f'endpoints: [{{name: clf, type: custom, served_models: [{{model: "{model}"}}]}}]\n',
        )
        with pytest.raises(ConfigError) as caught:
            build_runtime(load_config_file(path))
    finally:
        server.shutdown()
        server.server_close()
    (issue,) = caught.value.issues
    assert str(issue) == (
        f"endpoints[0].served_models[0].model: cannot resolve '{model}' in the registry ({code})"
    )
