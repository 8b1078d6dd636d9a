"""`pip install .` without the lock file gives a gateway on which the documented features work.

Once per module: the project (tracked and new files, no requirements*.lock) is copied to a temp
dir and installed into a fresh venv, resolving from pyproject.toml alone. That venv's python
trains the demo model and serves one gateway with every kind of endpoint (a custom MLflow model,
a foundation LLM, an `external` anthropic one through litellm), the Postgres ledger, Redis limits
and JWT auth with a PEM key; the tests drive it over HTTP from the dev venv. The gateway runs
from a directory outside the repo, so it can only import the installed copy.

Installer: `uv pip install` when uv is next to this interpreter (~10 s from an empty cache),
else pip (~3 min); GATEWAY_INSTALL_WITH=pip|uv chooses. Needs PyPI, Postgres and Redis (the
GATEWAY_TEST_POSTGRES / GATEWAY_TEST_REDIS_URL defaults). Skipped only when
GATEWAY_SKIP_INSTALL_TEST=1, never by itself: a failure to build or reach a service fails.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pandas as pd
import pytest
import redis
from joserfc import jwt
from joserfc.jwk import RSAKey

from gateway.auth.keys import key_digest
from tests.fakes.anthropic_upstream import FakeAnthropic
from tests.fakes.openai_upstream import FakeOpenAI
from tests.gateway_process import GatewayProcess, run_gateway, write_config
from tests.llm_fixtures import (
    CLAUDE_USER,
    HELLO_REPLY,
    USER,
    anthropic_client,
    openai_client,
    text_of,
)
from tests.models import IRIS_COLUMNS, IRIS_ONE_ROW

pytestmark = [
    pytest.mark.install,
    pytest.mark.slow,
    pytest.mark.skipif(
        os.environ.get("GATEWAY_SKIP_INSTALL_TEST") == "1",
        reason="GATEWAY_SKIP_INSTALL_TEST=1",
    ),
]

REPO = Path(__file__).resolve().parent.parent
PG_URL = os.environ.get("GATEWAY_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("GATEWAY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
RUN = uuid.uuid4().hex[:10]  # names this run's key ids, Postgres schema and Redis keys
APP_KEY = f"gw-install-app-{RUN}-0123456789abcdef"
LIMITED_KEY = f"gw-install-limited-{RUN}-0123456789"
ADMIN_KEY = f"gw-install-admin-{RUN}-0123456789abcd"
LIMITED_ID = f"limited-{RUN}"
SCHEMA = f"gw_install_{RUN}"
ISSUER = "https://idp.example.com/install"
AUDIENCE = "gateway-install"
SIGNER = RSAKey.generate_key(2048, parameters={"kid": "install-1"})
# The fresh venv must not find the repo (PYTHONPATH) nor write the developer's MLflow folders.
CHILD_ENV = {"PYTHONPATH": "", "MLFLOW_DISABLE_TELEMETRY": "true"}


@dataclass(frozen=True)
class FreshVenv:
    root: Path
    installer: str
    seconds: float

    @property
    def python(self) -> str:
        return str(self.root / "bin" / "python")

    def run(self, *args: str, cwd: Path) -> str:
        done = subprocess.run(
            args,
            cwd=cwd,
            env={**os.environ, **CHILD_ENV},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, f"{args} failed:\n{done.stdout}\n{done.stderr}"
        return done.stdout


def installer() -> list[str]:
    uv = Path(sys.executable).with_name("uv")
    chosen = os.environ.get("GATEWAY_INSTALL_WITH") or ("uv" if uv.exists() else "pip")
    if chosen == "uv":
        assert uv.exists(), f"GATEWAY_INSTALL_WITH=uv, but there is no {uv}"
        return [str(uv), "pip", "install", "--no-config", "--python"]  # no uv.toml constraints
    assert chosen == "pip", f"GATEWAY_INSTALL_WITH={chosen!r}: pip or uv"
    return []


def copy_project(target: Path) -> None:
    """The files git tracks or would add (what a clone of the branch holds), minus the locks."""
    listed = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = REPO / name
        if source.is_file() and not (name.startswith("requirements") and name.endswith(".lock")):
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    assert (target / "pyproject.toml").is_file() and not list(target.glob("*.lock"))


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> FreshVenv:
    base = tmp_path_factory.mktemp("install")
    source, root = base / "src", base / "venv"
    copy_project(source)
    uv = installer()
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "venv", root], check=True)  # with pip, as users have
    python = str(root / "bin" / "python")
    command = [*uv, python, str(source)] if uv else [python, "-m", "pip", "install", str(source)]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **CHILD_ENV})
    assert done.returncode == 0, f"{command} failed:\n{done.stdout}\n{done.stderr}"
    check = [*uv[:2], "check", "--python", python] if uv else [python, "-m", "pip", "check"]
    subprocess.run(check, check=True)  # the resolved set is consistent
    fresh = FreshVenv(root, "uv" if uv else "pip", time.monotonic() - started)
    print(f"fresh venv with {fresh.installer} in {fresh.seconds:.1f}s")
    return fresh


# --- the services the gateway uses ----------------------------------------------------------------


def _postgres(sql: str, *args: Any) -> list[asyncpg.Record]:
    async def run() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(PG_URL, timeout=5)
        try:
            return list(await conn.fetch(sql, *args))
        finally:
            await conn.close()

    return asyncio.run(run())


@pytest.fixture(scope="module")
def ledger_url() -> Iterator[str]:
    """The Postgres ledger, in a schema of this run's (asyncpg sends `search_path` as a setting)."""
    _postgres(f"CREATE SCHEMA {SCHEMA}")
    try:
        yield f"{PG_URL}?search_path={SCHEMA}"
    finally:
        _postgres(f"DROP SCHEMA {SCHEMA} CASCADE")


@pytest.fixture(scope="module")
def store() -> Iterator[redis.Redis]:
    with redis.Redis.from_url(REDIS_URL, socket_timeout=2) as client:
        client.ping()
        yield client
        for name in client.scan_iter(match=f"*{RUN}*"):
            client.delete(name)


@pytest.fixture(scope="module")
def openai_fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture(scope="module")
def anthropic_fake() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as fake:
        yield fake


@pytest.fixture(scope="module")
def gateway(
    venv: FreshVenv,
    ledger_url: str,
    store: redis.Redis,
    openai_fake: FakeOpenAI,
    anthropic_fake: FakeAnthropic,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[GatewayProcess]:
    workdir = tmp_path_factory.mktemp("installed-gateway")
    started = time.monotonic()
    trained = venv.run(
        venv.python,
        "-c",
        "import sys; from pathlib import Path; from gateway.demo import train_demo_model; "
        "print(train_demo_model(Path(sys.argv[1])))",
        str(workdir / "iris"),
        cwd=workdir,
    )
    assert Path(trained.strip()) == workdir / "iris"
    print(f"demo model trained by the fresh venv in {time.monotonic() - started:.1f}s")
    pem = SIGNER.as_pem(private=False).decode()
    config = f"""\
        limits: {{store: "{REDIS_URL}"}}
        usage: {{ledger: "{ledger_url}", flush_interval_ms: 20}}
        auth:
          keys:
            - {{id: app-{RUN}, sha256: "{key_digest(APP_KEY)}"}}
            - {{id: {LIMITED_ID}, sha256: "{key_digest(LIMITED_KEY)}", limits: {{requests_per_minute: 2}}}}
            - {{id: admin-{RUN}, sha256: "{key_digest(ADMIN_KEY)}", roles: [user, admin]}}
          jwt:
            issuer: "{ISSUER}"
            audience: "{AUDIENCE}"
            algorithms: [RS256]
            public_key: {json.dumps(pem)}
        groups:
          scientists: {{endpoints: ["iris"]}}
        endpoints:
          - {{name: iris, type: custom, default: true, served_models: [{{model: ./iris}}]}}
          - name: llama
            type: foundation
            task: chat
            deployments: [{{api_base: "{openai_fake.base_url}", model: llama-3, api_key: sk-fake}}]
          - name: e5
            type: foundation
            task: embeddings
            deployments: [{{api_base: "{openai_fake.base_url}", model: e5, api_key: sk-fake}}]
          - name: claude
            type: external
            provider: anthropic
            task: chat
            model: claude-x
            api_key: sk-fake-anthropic
            api_base: "{anthropic_fake.url}"
        """
    path = write_config(workdir, textwrap.dedent(config))
    started = time.monotonic()
    with run_gateway(
        path, workdir=workdir, python=venv.python, cwd=workdir, env=CHILD_ENV
    ) as process:
        print(f"gateway from the fresh venv ready in {time.monotonic() - started:.1f}s")
        yield process


# --- the tests ------------------------------------------------------------------------------------


def auth(key: str = APP_KEY) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def test_the_installed_copy_serves_not_the_repo(venv: FreshVenv, tmp_path: Path) -> None:
    where = venv.run(venv.python, "-c", "import gateway; print(gateway.__file__)", cwd=tmp_path)
    assert "site-packages" in where and str(REPO) not in where
    key = venv.run(str(venv.root / "bin" / "gateway"), "keys", "new", "--id", "smoke", cwd=tmp_path)
    assert "gw-" in key  # the console script of [project.scripts]
    demo = venv.run(venv.python, "-m", "gateway.demo", "serve", "--help", cwd=tmp_path)
    assert "--llm-port" in demo  # make serve's launcher and its stand-in for vLLM are installed
    venv.run(venv.python, "-c", "import gateway.demo.stand_in_llm", cwd=tmp_path)


def test_the_custom_model_scores_json_csv_and_parquet(gateway: GatewayProcess) -> None:
    url = f"{gateway.url}/serving-endpoints/iris/invocations"
    assert httpx.post(url, json=IRIS_ONE_ROW, headers=auth()).json() == {"predictions": [0]}
    csv = ",".join(IRIS_COLUMNS) + "\n5.1,3.5,1.4,0.2\n"
    answer = httpx.post(
        f"{gateway.url}/invocations", content=csv, headers={**auth(), "content-type": "text/csv"}
    )
    assert answer.json() == {"predictions": [0]}, answer.text
    parquet = io.BytesIO()
    pd.DataFrame([[5.1, 3.5, 1.4, 0.2]], columns=IRIS_COLUMNS).to_parquet(parquet)
    answer = httpx.post(
        url,
        content=parquet.getvalue(),
        headers={**auth(), "content-type": "application/vnd.apache.parquet"},
    )
    assert answer.json() == {"predictions": [0]}, answer.text


def test_a_foundation_endpoint_chats_streams_and_embeds(
    gateway: GatewayProcess, openai_fake: FakeOpenAI
) -> None:
    with openai_client(gateway, key=APP_KEY) as sdk:
        completion = sdk.chat.completions.create(model="llama", messages=USER)
        assert completion.choices[0].message.content == HELLO_REPLY
        with sdk.chat.completions.create(model="llama", messages=USER, stream=True) as stream:
            text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        assert text == HELLO_REPLY
        assert len(sdk.embeddings.create(model="e5", input=["a", "b"]).data) == 2
    assert openai_fake.requests[0].body["model"] == "llama-3"


def test_tokens_are_counted_with_tiktoken_when_the_upstream_reports_none(
    gateway: GatewayProcess, openai_fake: FakeOpenAI
) -> None:
    openai_fake.inject("no_usage")
    rid = f"install-{uuid.uuid4().hex[:12]}"
    with openai_client(gateway, key=APP_KEY) as sdk:
        sdk.chat.completions.create(
            model="llama", messages=USER, extra_headers={"x-request-id": rid}
        )
    row = ledger_row(rid)
    assert row["estimated"] and row["prompt_tokens"] > 0 and row["completion_tokens"] > 0


def test_an_external_anthropic_endpoint_goes_through_litellm(
    gateway: GatewayProcess, anthropic_fake: FakeAnthropic
) -> None:
    with openai_client(gateway, key=APP_KEY, timeout=60) as sdk:  # litellm may still be importing
        completion = sdk.chat.completions.create(model="claude", messages=USER, max_tokens=32)
        assert completion.choices[0].message.content == HELLO_REPLY
        with sdk.chat.completions.create(
            model="claude", messages=USER, max_tokens=32, stream=True
        ) as stream:
            text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        assert text == HELLO_REPLY
    assert anthropic_fake.requests[0].path == "/v1/messages"
    with anthropic_client(gateway, key=APP_KEY) as claude:
        message = claude.messages.create(model="llama", max_tokens=32, messages=CLAUDE_USER)
    assert text_of(message.content[0]) == HELLO_REPLY


def ledger_row(rid: str, timeout: float = 10) -> asyncpg.Record:
    """The Postgres row of the request sent with x-request-id `rid` (written in the background)."""
    deadline = time.monotonic() + timeout
    sql = f"SELECT * FROM {SCHEMA}.gateway_usage WHERE client_request_id = $1"
    while not (rows := _postgres(sql, rid)):
        assert time.monotonic() < deadline, f"no row for request {rid} in Postgres"
        time.sleep(0.1)
    [row] = rows
    return row


def test_usage_lands_in_postgres(gateway: GatewayProcess) -> None:
    rid = f"install-{uuid.uuid4().hex[:12]}"
    answer = httpx.post(
        f"{gateway.url}/invocations", json=IRIS_ONE_ROW, headers={**auth(), "x-request-id": rid}
    )
    assert answer.status_code == 200
    row = ledger_row(rid)
    assert (row["endpoint"], row["status"], row["principal"]) == ("iris", 200, f"app-{RUN}")
    report = httpx.get(f"{gateway.url}/admin/usage?group_by=endpoint", headers=auth(ADMIN_KEY))
    assert report.status_code == 200, report.text
    assert "iris" in {line["endpoint"] for line in report.json()["data"]}


def test_limits_are_counted_in_redis(gateway: GatewayProcess, store: redis.Redis) -> None:
    url = f"{gateway.url}/invocations"
    statuses = [
        httpx.post(url, json=IRIS_ONE_ROW, headers=auth(LIMITED_KEY)).status_code for _ in range(3)
    ]
    assert statuses == [200, 200, 429]
    assert list(store.scan_iter(match=f"*key:{LIMITED_ID}*"))


def mint(**claims: Any) -> str:
    now = int(time.time())
    payload = {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "iat": now, "exp": now + 300}
    payload.update(claims)
    return jwt.encode({"alg": "RS256", "kid": SIGNER.kid}, payload, SIGNER, ["RS256"])


def test_a_jwt_signed_with_the_configured_key_is_accepted(gateway: GatewayProcess) -> None:
    url = f"{gateway.url}/invocations"
    assert (
        httpx.post(url, json=IRIS_ONE_ROW, headers=auth(mint(groups=["scientists"]))).status_code
        == 200
    )
    assert httpx.post(url, json=IRIS_ONE_ROW, headers=auth(mint(aud="other"))).status_code == 401
    denied = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json={"model": "llama", "messages": USER},
        headers=auth(mint(groups=["scientists"])),
    )
    assert denied.status_code == 403


def test_metrics_ready_version_and_docs(gateway: GatewayProcess) -> None:
    ready = httpx.get(f"{gateway.url}/ready")
    assert ready.status_code == 200, ready.text
    metrics = httpx.get(f"{gateway.url}/metrics")
    assert metrics.status_code == 200 and "gateway_requests_total" in metrics.text
    assert httpx.get(f"{gateway.url}/version/gateway").json()["mlflow"]
    assert httpx.get(f"{gateway.url}/openapi.json").json()["paths"]
    assert httpx.get(f"{gateway.url}/docs").status_code == 200
