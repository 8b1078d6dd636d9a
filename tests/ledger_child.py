"""Records usage events as fast as it can until killed; prints each id once `record` returned.

Run by tests/test_ledger.py, which SIGKILLs it and checks that every id printed (acknowledged)
has its row. Usage: python -m tests.ledger_child URL TABLE SPOOL_DIR [CONCURRENCY]
"""

from __future__ import annotations

import asyncio
import itertools
import os
import sys
import time
from pathlib import Path

from gateway.metering.ledger import Ledger
from gateway.metering.usage import UsageEvent


async def main(url: str, table: str, spool_dir: Path, concurrency: int) -> None:
    # Small batches, a short interval and small segments, so that the kill lands while the
    # writer inserts, segments rotate and drained ones are deleted.
    ledger = Ledger(
        url, spool_dir, batch_size=50, flush_interval_s=0.01, table=table, segment_bytes=32 << 10
    )
    await ledger.start()
    ids = itertools.count()
    prefix = f"k{os.getpid()}-"
    out = sys.stdout

    async def worker() -> None:
        while True:
            request_id = f"{prefix}{next(ids)}"
            event = UsageEvent(
                request_id=request_id,
                time=time.time(),
                principal="child",
                groups=("load",),
                endpoint="chat",
                served="m",
                route="/v1/chat/completions",
                status=200,
                latency_ms=1.0,
                overhead_ms=0.1,
                prompt_tokens=3,
                completion_tokens=4,
            )
            await ledger.record(event)
            out.write(request_id + "\n")  # acknowledged: only now may the client see a 2xx
            out.flush()

    await asyncio.gather(*(worker() for _ in range(concurrency)))


if __name__ == "__main__":
    concurrency = int(sys.argv[4]) if len(sys.argv) > 4 else 32
    asyncio.run(main(sys.argv[1], sys.argv[2], Path(sys.argv[3]), concurrency))
