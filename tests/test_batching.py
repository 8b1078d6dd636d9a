"""Micro-batching: answers identical to unbatched ones, under real concurrent load."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.gateway_process import GatewayProcess, run_gateway, write_config
from tests.models import IRIS_COLUMNS, TestModels


@pytest.fixture(scope="module")
def gateway(
    models: TestModels, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    workdir = tmp_path_factory.mktemp("batching")
    endpoints = ""
    for name, model in (("iris", models.classifier), ("diabetes", models.regressor)):
        for suffix, batching in (
            ("plain", ""),
            ("batched", "batching: {max_batch_size: 16, max_wait_ms: 5}"),
        ):
            endpoints += f"""
  - name: {name}-{suffix}
    type: custom
    served_models: [{{model: "{model}"}}]
    {batching}
"""
    config = write_config(workdir, "endpoints:" + endpoints)
    with run_gateway(config, workdir=workdir) as process:
        yield process


def iris_requests(rng: random.Random, count: int) -> list[dict[str, Any]]:
    requests: list[dict[str, Any]] = []
    for i in range(count):
        row = [round(rng.uniform(0.1, 8.0), 2) for _ in IRIS_COLUMNS]
        if i % 3 == 0:
            requests.append({"dataframe_records": [dict(zip(IRIS_COLUMNS, row, strict=True))]})
        elif i % 7 == 0:
            requests.append(
                {"dataframe_split": {"columns": IRIS_COLUMNS, "data": [row, row[::-1]]}}
            )
        else:
            requests.append({"dataframe_split": {"columns": IRIS_COLUMNS, "data": [row]}})
        if i % 10 == 5:  # fails schema enforcement: a string where a double is expected
            requests[-1] = {"dataframe_split": {"columns": IRIS_COLUMNS, "data": [["x", *row[1:]]]}}
        if i % 10 == 8:  # a missing column
            requests[-1] = {"dataframe_split": {"columns": IRIS_COLUMNS[:3], "data": [row[:3]]}}
    return requests


async def send_all(
    url: str, bodies: list[dict[str, Any]], concurrency: int
) -> list[tuple[int, Any]]:
    limits = httpx.Limits(max_connections=concurrency)
    semaphore = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:

        async def one(body: dict[str, Any]) -> tuple[int, Any]:
            async with semaphore:
                response = await client.post(url, json=body)
                return response.status_code, response.json()

        return await asyncio.gather(*(one(body) for body in bodies))


def batch_stats(gateway: GatewayProcess, endpoint: str) -> tuple[int, int]:
    (served,) = httpx.get(f"{gateway.url}/ready").json()["endpoints"][endpoint]
    return served["batches"], served["batched_requests"]


@pytest.mark.parametrize("model", ["iris", "diabetes"])
def test_batched_answers_equal_unbatched_ones_under_load(
    gateway: GatewayProcess, model: str
) -> None:
    rng = random.Random(7)
    if model == "iris":
        bodies = iris_requests(rng, 240)
    else:
        columns = ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]
        bodies = [
            {
                "dataframe_split": {
                    "columns": columns,
                    "data": [[round(rng.uniform(-0.1, 0.1), 4) for _ in columns]],
                }
            }
            for _ in range(240)
        ]
        bodies[17] = {"dataframe_split": {"columns": columns, "data": [["bad", *[0.0] * 9]]}}
    base = f"{gateway.url}/serving-endpoints/{model}"
    unbatched = asyncio.run(send_all(f"{base}-plain/invocations", bodies, concurrency=4))
    before = batch_stats(gateway, f"{model}-batched")
    batched = asyncio.run(send_all(f"{base}-batched/invocations", bodies, concurrency=48))
    after = batch_stats(gateway, f"{model}-batched")

    if model == "iris":
        assert batched == unbatched  # statuses and bodies, request by request, bit for bit
    else:
        # A regressor's floats come from BLAS, which sums a 1-row and an n-row product in a
        # different order: the last bit may differ. Everything else must be identical.
        assert [status for status, _ in batched] == [status for status, _ in unbatched]
        for (status, got), (_, want) in zip(batched, unbatched, strict=True):
            if status != 200:
                assert got == want
            else:
                assert got["predictions"] == pytest.approx(want["predictions"], rel=1e-12, abs=0)
    failures = [status for status, _ in batched if status != 200]
    assert failures and all(status == 400 for status in failures)
    assert any(status == 200 for status, _ in batched)
    batches, requests = after[0] - before[0], after[1] - before[1]
    assert requests > batches, "no two requests were ever merged"


def test_a_lone_request_is_not_delayed_into_a_batch(gateway: GatewayProcess) -> None:
    body = {"dataframe_split": {"columns": IRIS_COLUMNS, "data": [[5.1, 3.5, 1.4, 0.2]]}}
    before = batch_stats(gateway, "iris-batched")
    for _ in range(5):
        response = httpx.post(
            f"{gateway.url}/serving-endpoints/iris-batched/invocations", json=body
        )
        assert response.json() == {"predictions": [0]}
    after = batch_stats(gateway, "iris-batched")
    assert (after[0] - before[0], after[1] - before[1]) == (5, 5)


def test_requests_that_cannot_be_merged_still_get_answers(gateway: GatewayProcess) -> None:
    bodies: list[dict[str, Any]] = [
        {"inputs": [[5.1, 3.5, 1.4, 0.2]]},
        {"instances": [dict(zip(IRIS_COLUMNS, [5.1, 3.5, 1.4, 0.2], strict=True))]},
        {"dataframe_records": [dict(zip(IRIS_COLUMNS, [5.1, 3.5, None, 0.2], strict=True))]},
    ] * 10
    url = gateway.url + "/serving-endpoints/iris-{}/invocations"
    assert asyncio.run(send_all(url.format("batched"), bodies, 16)) == asyncio.run(
        send_all(url.format("plain"), bodies, 16)
    )
