"""Limits, metrics and the ledger through real gateway processes (memory and Redis stores)."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from gateway.auth.keys import key_digest
from tests.gateway_process import (
    GatewayProcess,
    free_port,
    run_gateway,
    wait_until_ready,
    write_config,
)
from tests.models import IRIS_ONE_ROW, TestModels

REDIS_URL = os.environ.get("GATEWAY_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
KEY_A = "gw-governance-key-a-0123456789abcdef"
KEY_B = "gw-governance-key-b-0123456789abcdef"
ADMIN = "gw-governance-admin-0123456789abcdef"
IRIS = IRIS_ONE_ROW


def config_text(
    models: TestModels,
    store: str,
    *,
    key_rpm: float = 1000,
    group_limits: str = "requests_per_minute: 1000",
) -> str:
    return f"""
limits: {{store: "{store}"}}
groups:
  team: {{limits: {{{group_limits}}}}}
auth:
  keys:
    - {{id: a, sha256: "{key_digest(KEY_A)}", groups: [team], limits: {{requests_per_minute: {key_rpm}}}}}
    - {{id: b, sha256: "{key_digest(KEY_B)}", groups: [team]}}
    - {{id: admin, sha256: "{key_digest(ADMIN)}", roles: [user, admin]}}
usage: {{ledger: "sqlite:///usage.db", spool_dir: spool}}
endpoints:
  - {{name: iris, type: custom, served_models: [{{model: "{models.classifier}"}}]}}
"""


def score(gateway: GatewayProcess, key: str) -> httpx.Response:
    return httpx.post(
        f"{gateway.url}/invocations",
        json=IRIS,
        headers={"authorization": f"Bearer {key}"},
        timeout=30,
    )


def test_a_key_limit_answers_429_with_retry_after_and_openai_headers(
    models: TestModels, tmp_path: Path
) -> None:
    config = write_config(tmp_path, config_text(models, "memory://", key_rpm=3))
    with run_gateway(config, workdir=tmp_path) as gateway:
        answers = [score(gateway, KEY_A) for _ in range(4)]
        assert [a.status_code for a in answers] == [200, 200, 200, 429]
        assert answers[0].headers["x-ratelimit-limit-requests"] == "3"
        assert answers[0].headers["x-ratelimit-remaining-requests"] == "2"
        assert "x-ratelimit-reset-requests" in answers[0].headers
        refused = answers[3]
        assert int(refused.headers["retry-after"]) >= 1
        assert refused.json()["error_code"] == "REQUEST_LIMIT_EXCEEDED"
        assert score(gateway, KEY_B).status_code == 200  # another key of the group is unaffected
        metrics = httpx.get(f"{gateway.url}/metrics").text
        assert 'gateway_limit_rejections_total{kind="requests",scope="key"} 1.0' in metrics
        assert (
            'gateway_requests_total{endpoint="iris",route="/invocations",status="200"}' in metrics
        )


def _burst(urls: list[str], key: str, total: int) -> list[int]:
    async def run() -> list[int]:
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=64)) as client:
            semaphore = asyncio.Semaphore(64)

            async def one(i: int) -> int:
                async with semaphore:
                    response = await client.post(
                        f"{urls[i % len(urls)]}/invocations",
                        json=IRIS,
                        headers={"authorization": f"Bearer {key}"},
                    )
                    return response.status_code

            return await asyncio.gather(*(one(i) for i in range(total)))

    return asyncio.run(run())


@pytest.fixture
def redis_namespace() -> Iterator[str]:
    """A fresh Redis database state for a test: the gateways count under keys named by config,
    so each test uses its own key ids (see `unique_config`)."""
    yield uuid.uuid4().hex[:8]


def test_two_gateways_sharing_redis_admit_exactly_the_limit(
    models: TestModels, tmp_path: Path, redis_namespace: str
) -> None:
    # per hour: the burst is over long before the bucket refills one request (90 s)
    text = config_text(models, REDIS_URL, key_rpm=1, group_limits="requests_per_hour: 40")
    # unique ids so counters from earlier runs (same Redis) do not interfere
    text = text.replace("id: a,", f"id: a-{redis_namespace},").replace(
        "team", f"team-{redis_namespace}"
    )
    with ExitStack() as stack:
        gateways = []
        for n in range(2):
            workdir = tmp_path / f"g{n}"
            workdir.mkdir()
            config = write_config(workdir, text)
            gateways.append(stack.enter_context(run_gateway(config, workdir=workdir)))
        # key b has no key limit: only the group's 40/hour applies, shared by both processes
        statuses = _burst([g.url for g in gateways], KEY_B, 400)
        assert statuses.count(200) == 40
        assert statuses.count(429) == 360
        # key a is in the same group: the group is spent for it too
        assert score(gateways[0], KEY_A).status_code == 429


def test_every_acknowledged_request_has_its_ledger_row_after_sigkill(
    models: TestModels, tmp_path: Path
) -> None:
    config = write_config(tmp_path, config_text(models, "memory://"))
    port = free_port()
    log_path = tmp_path / "killed.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gateway",
                "serve",
                "--config",
                str(config),
                "--port",
                str(port),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    acknowledged: list[str] = []
    try:
        wait_until_ready(url, process, log_path)

        async def hammer() -> None:
            async with httpx.AsyncClient(timeout=10) as client:

                async def worker(w: int) -> None:
                    for i in range(10_000):
                        request_id = f"kill-{w}-{i}"
                        try:
                            response = await client.post(
                                f"{url}/invocations",
                                json=IRIS,
                                headers={
                                    "authorization": f"Bearer {KEY_B}",
                                    "x-request-id": request_id,
                                },
                            )
                        except httpx.TransportError:
                            return
                        if response.status_code == 200:
                            acknowledged.append(request_id)

                workers = [asyncio.create_task(worker(w)) for w in range(16)]
                await asyncio.sleep(2.0)
                os.kill(process.pid, signal.SIGKILL)
                await asyncio.gather(*workers)

        asyncio.run(hammer())
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
    assert len(acknowledged) > 50
    # a new gateway on the same spool replays what the killed one left, then drains on exit
    with run_gateway(config, workdir=tmp_path):
        pass
    rows = (
        sqlite3.connect(tmp_path / "usage.db")
        .execute(
            "SELECT client_request_id, COUNT(*) FROM gateway_usage"
            " WHERE client_request_id LIKE 'kill-%' GROUP BY client_request_id"
        )
        .fetchall()
    )
    counts = dict(rows)
    assert all(count == 1 for count in counts.values()), "duplicated rows"
    missing = [rid for rid in acknowledged if rid not in counts]
    assert not missing, f"{len(missing)} acknowledged requests have no row"


def test_sigterm_drains_the_ledger_and_usage_is_readable(
    models: TestModels, tmp_path: Path
) -> None:
    config = write_config(tmp_path, config_text(models, "memory://"))
    with run_gateway(config, workdir=tmp_path) as gateway:
        for _ in range(5):
            assert score(gateway, KEY_A).status_code == 200
        assert score(gateway, KEY_B).status_code == 200
        forbidden = httpx.get(
            f"{gateway.url}/admin/usage", headers={"authorization": f"Bearer {KEY_A}"}
        )
        assert forbidden.status_code == 403
    # terminated (SIGTERM): everything is in the database now
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway",
            "usage",
            "--config",
            str(config),
            "--group-by",
            "principal",
            "--format",
            "csv",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("principal,principal_kind,requests")
    by_principal = {tuple(line.split(",")[:2]): int(line.split(",")[2]) for line in lines[1:]}
    assert by_principal == {("a", "key"): 5, ("b", "key"): 1}


def test_csv_and_parquet_calls_are_recorded_with_their_rows(
    models: TestModels, tmp_path: Path
) -> None:
    import pandas as pd

    frame = pd.DataFrame(
        IRIS["dataframe_split"]["data"] * 3, columns=IRIS["dataframe_split"]["columns"]
    )
    parquet = io.BytesIO()
    frame.to_parquet(parquet)
    config = write_config(tmp_path, config_text(models, "memory://"))
    with run_gateway(config, workdir=tmp_path) as gateway:
        for mime, body in (
            ("text/csv", frame.to_csv(index=False).encode()),
            ("application/vnd.apache.parquet", parquet.getvalue()),
        ):
            rid = f"rows-{uuid.uuid4().hex[:8]}"
            answer = httpx.post(
                f"{gateway.url}/invocations",
                content=body,
                headers={
                    "authorization": f"Bearer {KEY_A}",
                    "content-type": mime,
                    "x-request-id": rid,
                },
                timeout=30,
            )
            assert answer.status_code == 200, answer.text
            events = httpx.get(
                f"{gateway.url}/admin/usage/recent", headers={"authorization": f"Bearer {ADMIN}"}
            ).json()["data"]
            assert [e["rows"] for e in events if e["client_request_id"] == rid] == [3], mime
