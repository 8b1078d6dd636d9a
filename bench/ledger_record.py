"""What `await Ledger.record(event)` costs a request: latency and throughput at concurrency 1 / 32.

Each scenario: `concurrency` tasks call `record` back to back for `--duration` seconds on a
fresh ledger (spool + database in a temporary directory on the same disk as the repo, unless
--dir says otherwise), with the background writer draining into the database meanwhile.

    .venv/bin/python bench/ledger_record.py
    .venv/bin/python bench/ledger_record.py --url postgresql://postgres@127.0.0.1/test \
        --concurrency 1,8,32,128
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from gateway.metering.ledger import Ledger
from gateway.metering.usage import UsageEvent


def _event(request_id: str) -> UsageEvent:
    return UsageEvent(
        request_id=request_id,
        time=time.time(),
        principal="bench",
        groups=("team-a",),
        endpoint="chat",
        served="chat/0",
        route="/v1/chat/completions",
        status=200,
        latency_ms=12.0,
        overhead_ms=0.4,
        prompt_tokens=120,
        completion_tokens=40,
        cost_usd=0.0012,
    )


async def scenario(url: str, workdir: Path, concurrency: int, duration: float) -> dict[str, float]:
    table = f"bench_{uuid.uuid4().hex[:8]}"
    if url.startswith("sqlite"):
        url = f"sqlite:///{workdir / table}.db"
    ledger = Ledger(url, workdir / f"spool-{table}", table=table)
    await ledger.start()
    latencies: list[float] = []
    stop = time.perf_counter() + duration
    prefix = uuid.uuid4().hex[:8]

    async def worker(index: int) -> None:
        n = 0
        while time.perf_counter() < stop:
            started = time.perf_counter()
            await ledger.record(_event(f"{prefix}-{index}-{n}"))
            latencies.append(time.perf_counter() - started)
            n += 1

    began = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    elapsed = time.perf_counter() - began
    stats = ledger.stats()
    await ledger.aclose()
    if not url.startswith("sqlite"):
        import asyncpg

        conn = await asyncpg.connect(url)
        await conn.execute(f"DROP TABLE IF EXISTS {table}")
        await conn.close()
    latencies.sort()
    return {
        "records": len(latencies),
        "per_s": len(latencies) / elapsed,
        "mean_ms": statistics.fmean(latencies) * 1000,
        "p50_ms": latencies[len(latencies) // 2] * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000,
        "per_fsync": stats.recorded / max(stats.spool_writes, 1),
    }


def fsync_baseline(workdir: Path, rounds: int = 200) -> float:
    fd = os.open(workdir / "probe", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        started = time.perf_counter()
        for _ in range(rounds):
            os.write(fd, b"x" * 400)
            os.fdatasync(fd)
        return (time.perf_counter() - started) / rounds * 1000
    finally:
        os.close(fd)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="sqlite:///", help="sqlite (a temp file) or postgresql://")
    parser.add_argument("--concurrency", default="1,32")
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--dir", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ledger-bench-", dir=args.dir) as tmp:
        workdir = Path(tmp)
        print(f"write+fdatasync of 400 B on this disk: {fsync_baseline(workdir):.3f} ms")
        print("| concurrency | records/s | mean ms | p50 ms | p99 ms | per fsync | CPU µs/rec |")
        print("|---:|---:|---:|---:|---:|---:|---:|")
        for concurrency in (int(c) for c in args.concurrency.split(",")):
            cpu = time.process_time()
            r = asyncio.run(scenario(args.url, workdir, concurrency, args.duration))
            cpu_us = (time.process_time() - cpu) / r["records"] * 1e6
            print(
                f"| {concurrency} | {r['per_s']:,.0f} | {r['mean_ms']:.3f} | {r['p50_ms']:.3f}"
                f" | {r['p99_ms']:.3f} | {r['per_fsync']:.1f} | {cpu_us:.0f} |"
            )


if __name__ == "__main__":
    main()
