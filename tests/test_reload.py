"""Config reloads on a running gateway: under load, refused ones, SIGHUP, the CLI, and registry
aliases that move."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.auth.keys import key_digest
from tests.fakes.openai_upstream import FakeOpenAI
from tests.gateway_process import GatewayProcess, run_gateway, write_config
from tests.models import IRIS_ONE_ROW, TestModels, register_versions

STABLE = "gw-reload-stable-key-0123456789abcdef"
ONLY_A = "gw-reload-only-in-a-0123456789abcdef"
ADMIN = "gw-reload-admin-key-0123456789abcdef"
LIMITED = "gw-reload-limited-key-0123456789abcd"
IRIS = IRIS_ONE_ROW


REDIS_URL = os.environ.get("GATEWAY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def config(models: TestModels, upstream: FakeOpenAI, variant: str) -> str:
    """Two valid configs that differ in keys, limits, traffic split and one endpoint."""
    a = variant == "a"
    extra_key = f'    - {{id: only-a, sha256: "{key_digest(ONLY_A)}"}}\n' if a else ""
    extra_endpoint = (
        f'  - {{name: extra, type: custom, served_models: [{{model: "{models.classifier}"}}]}}\n'
        if a
        else ""
    )
    split = (
        "[{model: CLF, traffic: 70}, {model: CLF2, traffic: 30}]"
        if a
        else "[{model: CLF, traffic: 100}]"
    )
    split = split.replace("CLF2", f'"{models.classifier}/"').replace(
        "CLF", f'"{models.classifier}"'
    )
    return f"""
registry: {{poll_s: 0}}
auth:
  keys:
    - {{id: stable, sha256: "{key_digest(STABLE)}", limits: {{requests_per_minute: {100000 if a else 90000}}}}}
    - {{id: limited, sha256: "{key_digest(LIMITED)}", limits: {{requests_per_hour: 3}}}}
    - {{id: admin, sha256: "{key_digest(ADMIN)}", roles: [user, admin]}}
{extra_key}endpoints:
  - {{name: iris, type: custom, default: true, served_models: {split}}}
  - name: chat
    type: foundation
    task: chat
    deployments: [{{api_base: "{upstream.base_url}", model: m}}]
{extra_endpoint}"""


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


def admin_post(gateway: GatewayProcess, path: str, content: str = "") -> httpx.Response:
    return httpx.post(
        f"{gateway.url}{path}",
        content=content,
        headers={"authorization": f"Bearer {ADMIN}"},
        timeout=120,
    )


def admin_config(gateway: GatewayProcess) -> dict[str, Any]:
    config: dict[str, Any] = httpx.get(
        f"{gateway.url}/admin/config", headers={"authorization": f"Bearer {ADMIN}"}
    ).json()
    return config


def test_reloads_under_load_fail_no_request(
    models: TestModels, upstream: FakeOpenAI, tmp_path: Path
) -> None:
    texts = {v: config(models, upstream, v) for v in "ab"}
    path = write_config(tmp_path, texts["a"])
    invalid = texts["b"] + "  - {name: broken, type: custom, served_models: [{model: ./nowhere}]}\n"
    with run_gateway(path, workdir=tmp_path) as gateway:
        versions = {admin_config(gateway)["version"]: "a"}
        for _ in range(3):  # spend the limited key's hourly allowance before any reload
            assert _score(gateway, LIMITED).status_code == 200
        outcomes: Counter[tuple[str, str, int]] = Counter()
        failures: list[str] = []

        async def load(stop: asyncio.Event) -> None:
            async with httpx.AsyncClient(timeout=30) as client:

                async def worker(n: int) -> None:
                    while not stop.is_set():
                        kind = ("iris", "chat", "extra", "only-a")[n % 4]
                        response = await _request(client, gateway.url, kind)
                        version = response.headers.get("x-config-version", "?")
                        outcomes[(kind, version, response.status_code)] += 1
                        if kind in ("iris", "chat") and response.status_code != 200:
                            failures.append(f"{kind} {response.status_code} {response.text[:200]}")

                await asyncio.gather(*(worker(n) for n in range(32)))

        async def reloads(stop: asyncio.Event) -> None:
            async with httpx.AsyncClient(
                timeout=120, headers={"authorization": f"Bearer {ADMIN}"}
            ) as client:
                for i in range(50):
                    if i % 5 == 4:
                        refused = await client.post(f"{gateway.url}/admin/reload", content=invalid)
                        assert refused.status_code == 400, refused.text
                        continue
                    variant = "b" if i % 2 == 0 else "a"
                    answer = await client.post(
                        f"{gateway.url}/admin/reload", content=texts[variant]
                    )
                    assert answer.status_code == 200, answer.text
                    versions[answer.json()["version"]] = variant
                    await asyncio.sleep(0.1)
            stop.set()

        async def run() -> None:
            stop = asyncio.Event()
            await asyncio.gather(load(stop), reloads(stop))

        asyncio.run(run())
        assert not failures, failures[:5]
        for (kind, version, status), count in outcomes.items():
            variant = versions.get(version)
            assert variant is not None, f"{count} {kind} answers from unknown version {version}"
            if kind == "extra":  # exists only in config a
                assert status == (200 if variant == "a" else 404), (kind, variant, status)
            if kind == "only-a":  # this key exists only in config a
                assert status == (200 if variant == "a" else 401), (kind, variant, status)
        assert {v for (_, v, _) in outcomes} >= set(versions), "both configs served traffic"
        # the limiter's counters survived 40 reloads: the spent key is still refused
        assert _score(gateway, LIMITED).status_code == 429
        state = admin_config(gateway)
        assert state["reloads"] == 40 and state["failed_reloads"] == 10
        assert state["last_error"][0].startswith("endpoints[2].served_models[0].model:")  # the 50th


async def _request(client: httpx.AsyncClient, url: str, kind: str) -> httpx.Response:
    if kind == "chat":
        return await client.post(
            f"{url}/v1/chat/completions",
            json={"model": "chat", "messages": [{"role": "user", "content": "hi"}]},
            headers={"authorization": f"Bearer {STABLE}"},
        )
    endpoint = "extra" if kind == "extra" else "iris"
    key = ONLY_A if kind == "only-a" else STABLE
    return await client.post(
        f"{url}/serving-endpoints/{endpoint}/invocations",
        json=IRIS,
        headers={"authorization": f"Bearer {key}"},
    )


def _score(gateway: GatewayProcess, key: str) -> httpx.Response:
    return httpx.post(
        f"{gateway.url}/invocations", json=IRIS, headers={"authorization": f"Bearer {key}"}
    )


def test_a_refused_reload_names_every_problem_and_keeps_the_old_config(
    models: TestModels, upstream: FakeOpenAI, tmp_path: Path
) -> None:
    path = write_config(tmp_path, config(models, upstream, "a"))
    with run_gateway(path, workdir=tmp_path) as gateway:
        before = admin_config(gateway)["version"]
        bad = "colour: blue\nendpoints:\n  - {name: x, type: custom, served_models: [{model: ./nowhere}]}\n"
        refused = admin_post(gateway, "/admin/reload", bad)
        assert refused.status_code == 400
        assert refused.json()["issues"] == ["colour: unknown key"]
        unloadable = config(models, upstream, "b").replace(str(models.classifier), str(tmp_path))
        refused = admin_post(gateway, "/admin/reload", unloadable)
        assert refused.status_code == 400
        assert refused.json()["issues"][0].startswith("endpoints[0].served_models[0].model:")
        state = admin_config(gateway)
        assert state["version"] == before and state["failed_reloads"] == 2
        assert _score(gateway, STABLE).status_code == 200
        assert _score(gateway, STABLE).headers["x-config-version"] == before


def test_sighup_rereads_the_file_and_the_cli_applies_one(
    models: TestModels, upstream: FakeOpenAI, tmp_path: Path
) -> None:
    path = write_config(tmp_path, config(models, upstream, "a"))
    with run_gateway(path, workdir=tmp_path) as gateway:
        first = admin_config(gateway)["version"]
        path.write_text(config(models, upstream, "b"))
        os.kill(gateway.process.pid, signal.SIGHUP)
        deadline = time.monotonic() + 30
        while admin_config(gateway)["version"] == first and time.monotonic() < deadline:
            time.sleep(0.1)
        after_hup = admin_config(gateway)
        assert after_hup["version"] != first
        assert after_hup["active"]["changes"]["keys"]["removed"] == ["only-a"]
        assert after_hup["active"]["changes"]["endpoints"]["removed"] == ["extra"]

        other = write_config(tmp_path, config(models, upstream, "a"), name="other.yaml")
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "gateway",
                "reload",
                "--config",
                str(other),
                "--url",
                gateway.url,
            ],
            capture_output=True,
            text=True,
            env={**os.environ, "GATEWAY_ADMIN_KEY": ADMIN},
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        assert admin_config(gateway)["version"] == first
        broken = write_config(tmp_path, "endpoints: [{name: x}]\n", name="broken.yaml")
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "gateway",
                "reload",
                "--config",
                str(broken),
                "--url",
                gateway.url,
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 1 and "endpoints[0].type" in result.stderr


def test_config_secrets_are_redacted(
    models: TestModels, upstream: FakeOpenAI, tmp_path: Path
) -> None:
    text = config(models, upstream, "a").replace(
        "model: m}", "model: m, api_key: sk-secret-upstream-key}"
    )
    path = write_config(tmp_path, text)
    with run_gateway(path, workdir=tmp_path) as gateway:
        shown = httpx.get(
            f"{gateway.url}/admin/config", headers={"authorization": f"Bearer {ADMIN}"}
        )
        assert "sk-secret-upstream-key" not in shown.text
        assert (
            httpx.get(
                f"{gateway.url}/admin/config", headers={"authorization": f"Bearer {STABLE}"}
            ).status_code
            == 403
        )


def test_an_endpoint_follows_its_registry_alias(tmp_path: Path) -> None:
    import mlflow

    registry_uri = register_versions(tmp_path / "registry")
    client = mlflow.MlflowClient(tracking_uri=registry_uri, registry_uri=registry_uri)
    path = write_config(
        tmp_path,
        f"""
registry_uri: "{registry_uri}"
registry: {{poll_s: 0.5}}
endpoints:
  - {{name: iris, type: custom, served_models: [{{model: "models:/iris@champion"}}]}}
""",
    )
    with run_gateway(path, workdir=tmp_path) as gateway:
        assert _served(gateway) == "models:/iris/1"
        client.set_registered_model_alias("iris", "champion", "2")
        seen = _serve_until(gateway, "models:/iris/2")
        assert set(seen) <= {"models:/iris/1", "models:/iris/2"}, (
            seen
        )  # every request answered, by v1 or v2
        # a v3 that cannot load: v2 keeps serving, and the failure is shown
        broken = tmp_path / "broken"
        broken.mkdir()
        (broken / "MLmodel").write_text("flavors: {}\n")
        version = client.create_model_version("iris", str(broken)).version
        client.set_registered_model_alias("iris", "champion", version)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            state = httpx.get(f"{gateway.url}/admin/config").json()
            if state["last_error"]:
                break
            assert _served(gateway) == "models:/iris/2"
            time.sleep(0.2)
        assert "cannot load 'models:/iris@champion'" in state["last_error"][0]
        assert _served(gateway) == "models:/iris/2"


def _served(gateway: GatewayProcess) -> str:
    response = httpx.post(f"{gateway.url}/invocations", json=IRIS, timeout=30)
    assert response.status_code == 200, response.text
    return response.headers["x-served-model"]


def _serve_until(gateway: GatewayProcess, label: str, timeout: float = 60) -> list[str]:
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen.append(_served(gateway))
        if seen[-1] == label:
            return seen
        time.sleep(0.05)
    raise AssertionError(f"never served by {label}: {seen[-5:]}")


# Broadcasts are signed; every process gets the same secret from its environment.
BROADCAST_ENV = {"GATEWAY_TEST_BROADCAST_SECRET": "reload-test-broadcast-secret-" + "0" * 32}


def _broadcast_config(models: TestModels, upstream: FakeOpenAI, variant: str, channel: str) -> str:
    redis_url = os.environ.get("GATEWAY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    return config(models, upstream, variant) + (
        f'reload: {{broadcast: "{redis_url}", channel: "{channel}",'
        ' broadcast_secret: "${GATEWAY_TEST_BROADCAST_SECRET}"}\n'
    )


def _versions_seen(url: str, tries: int = 12) -> set[str]:
    """The versions reported by whichever worker answers, over several connections."""
    seen = set()
    for _ in range(tries):
        with httpx.Client() as fresh:  # a new connection: the kernel may pick another worker
            seen.add(
                fresh.get(
                    f"{url}/admin/config", headers={"authorization": f"Bearer {ADMIN}"}
                ).json()["version"]
            )
    return seen


def _wait_for(predicate: object, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError("timed out")


def test_a_reload_reaches_another_replica_through_redis(
    models: TestModels, upstream: FakeOpenAI, tmp_path: Path
) -> None:
    channel = f"gateway-test-{os.getpid()}-{time.monotonic_ns()}"
    dirs = [tmp_path / "r1", tmp_path / "r2"]
    for directory in dirs:
        directory.mkdir()
    paths = [write_config(d, _broadcast_config(models, upstream, "a", channel)) for d in dirs]
    with (
        run_gateway(paths[0], workdir=dirs[0], env=BROADCAST_ENV) as first,
        run_gateway(paths[1], workdir=dirs[1], env=BROADCAST_ENV) as second,
    ):
        time.sleep(0.5)  # both subscribed
        answer = admin_post(
            first, "/admin/reload", _broadcast_config(models, upstream, "b", channel)
        )
        assert answer.status_code == 200, answer.text
        version = answer.json()["version"]
        started = time.monotonic()
        _wait_for(lambda: admin_config(second)["version"] == version, timeout=5)
        assert time.monotonic() - started < 1.5
        # a text the other replica cannot apply (a model path only the first has) is refused there
        local_only = dirs[0] / "local-model"
        shutil.copytree(models.classifier, local_only)
        text = _broadcast_config(models, upstream, "a", channel).replace(
            str(models.classifier), "./local-model"
        )
        applied = admin_post(first, "/admin/reload", text)
        assert applied.status_code == 200, applied.text
        _wait_for(lambda: admin_config(second)["failed_reloads"] == 1)
        assert admin_config(second)["version"] == version  # it kept its config
        assert (
            'gateway_config_reloads_total{outcome="refused"} 1.0'
            in httpx.get(f"{second.url}/metrics").text
        )


def test_every_worker_applies_a_reload(
    models: TestModels, upstream: FakeOpenAI, tmp_path: Path
) -> None:
    channel = f"gateway-test-workers-{os.getpid()}-{time.monotonic_ns()}"
    # Several workers need their limits in Redis (else each would admit the whole limit).
    store = f'limits: {{store: "{REDIS_URL}", on_store_error: allow}}\n'
    path = write_config(tmp_path, _broadcast_config(models, upstream, "a", channel) + store)
    with run_gateway(
        path, workdir=tmp_path, extra_args=("--workers", "2"), env=BROADCAST_ENV
    ) as gateway:
        time.sleep(1.0)  # the second worker may still be starting
        _wait_for(lambda: len(_versions_seen(gateway.url)) == 1, timeout=30)
        answer = admin_post(
            gateway, "/admin/reload", _broadcast_config(models, upstream, "b", channel) + store
        )
        assert answer.status_code == 200, answer.text
        version = answer.json()["version"]
        _wait_for(lambda: _versions_seen(gateway.url) == {version}, timeout=10)
        # every worker's own log lines reach the output
        _wait_for(lambda: gateway.log().count(f"config {version} applied") == 2, timeout=10)
        assert gateway.log().count("ready: config version") == 2
