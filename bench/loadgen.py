"""Closed-loop HTTP load generator: `concurrency` workers, each sending one POST after another.

Run it as a process of its own (`bench/invocations.py` pins it to a core the server does not use):

    python bench/loadgen.py --url http://127.0.0.1:8080/invocations --body-file body.json \
        --header 'Authorization: Bearer KEY' --concurrency 32 --warmup 1 --duration 5

It prints `measure-start` and `measure-end` lines when the measured window opens and closes (so a
supervisor can sample the server's CPU over exactly that window), then one JSON line: a
`LoadResult`. Requests completing during the warmup are discarded; requests still in flight when
the window closes are not counted. Any answer other than 200, and any transport error, is an error.

Two options for streaming endpoints (both off by default; without them nothing changes):

- `--ttfb`: also time each request until the first byte of its body arrives (not just the
  headers), reported as `ttfb_p50_ms` ... in the result (None without the option);
- `--expect TEXT`: a 200 whose body does not contain TEXT (e.g. `data: [DONE]`, the end of an
  OpenAI stream) is an error too, so a stream that ends early or with an error event is counted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import aiohttp

MEASURE_START = "measure-start"
MEASURE_END = "measure-end"
ERROR_BODY_CHARS = 1000


@dataclass(frozen=True, slots=True)
class LoadSpec:
    url: str
    body: bytes
    headers: dict[str, str]
    concurrency: int
    warmup_s: float
    duration_s: float
    timeout_s: float = 60.0
    ttfb: bool = False  # also time the first body byte (streams)
    expect: bytes | None = None  # a 200 whose body lacks this is an error


@dataclass(frozen=True, slots=True)
class Window:
    """The measured window, in `time.perf_counter()` seconds."""

    start: float
    end: float

    def holds(self, moment: float) -> bool:
        return self.start <= moment <= self.end


@dataclass(slots=True)
class Tally:
    latencies_s: list[float] = field(default_factory=list)  # successes completed in the window
    ttfbs_s: list[float] = field(default_factory=list)  # the same requests' first body byte
    errors: int = 0  # over the whole run, warmup included
    first_error: str | None = None

    def error(self, description: str) -> None:
        self.errors += 1
        if self.first_error is None:
            self.first_error = description


@dataclass(frozen=True, slots=True)
class LoadResult:
    concurrency: int
    duration_s: float
    requests: int  # successful responses completed in the measured window
    requests_per_s: float
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    mean_ms: float | None
    max_ms: float | None
    errors: int
    first_error: str | None
    client_cpu: float  # share of one core the load generator used during the window
    # Time to the first body byte, over the same requests as the latencies; None without `ttfb`.
    ttfb_p50_ms: float | None = None
    ttfb_p90_ms: float | None = None
    ttfb_p99_ms: float | None = None
    ttfb_mean_ms: float | None = None

    @classmethod
    def from_json(cls, text: str) -> LoadResult:
        return cls(**json.loads(text))


def percentile_ms(sorted_s: list[float], q: float) -> float | None:
    """Nearest-rank percentile of sorted seconds, in milliseconds."""
    if not sorted_s:
        return None
    rank = max(0, min(len(sorted_s) - 1, round(q / 100 * len(sorted_s)) - 1))
    return sorted_s[rank] * 1000


async def _send(session: aiohttp.ClientSession, spec: LoadSpec) -> str | None:
    """One request; None on a 200, else the status and body. Transport errors raise."""
    async with session.post(spec.url, data=spec.body, headers=spec.headers) as response:
        payload = await response.read()
        return _verdict(response.status, payload, spec.expect)


async def _send_timed(
    session: aiohttp.ClientSession, spec: LoadSpec
) -> tuple[str | None, float | None]:
    """`_send`, and the `perf_counter()` moment the first body byte arrived (None: empty body)."""
    async with session.post(spec.url, data=spec.body, headers=spec.headers) as response:
        first = await response.content.readany()
        first_byte_at = time.perf_counter() if first else None
        payload = first + await response.content.read() if first else first
        return _verdict(response.status, payload, spec.expect), first_byte_at


def _verdict(status: int, payload: bytes, expect: bytes | None) -> str | None:
    if status == 200 and (expect is None or expect in payload):
        return None
    text = payload[:ERROR_BODY_CHARS].decode("utf-8", errors="replace")
    if status == 200:
        return f"HTTP 200 without {expect!r} in the body: {text}"
    return f"HTTP {status}: {text}"


async def _worker(
    session: aiohttp.ClientSession, spec: LoadSpec, window: Window, tally: Tally
) -> None:
    first_byte_at: float | None = None
    while (started := time.perf_counter()) < window.end:
        try:
            if spec.ttfb:
                error, first_byte_at = await _send_timed(session, spec)
            else:
                error = await _send(session, spec)
        except (aiohttp.ClientError, TimeoutError) as exc:
            tally.error(f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(0.01)  # do not spin on a dead server
            continue
        done = time.perf_counter()
        if error is None and spec.ttfb and first_byte_at is None:
            error = "HTTP 200 with an empty body (no first byte to time)"
        if error is not None:
            tally.error(error)
        elif window.holds(done):
            tally.latencies_s.append(done - started)
            if first_byte_at is not None:
                tally.ttfbs_s.append(first_byte_at - started)


def _mark(event: str) -> None:
    sys.stdout.write(event + "\n")
    sys.stdout.flush()


async def _announce(window: Window) -> float:
    """Print the window markers on time; returns the CPU seconds this process used in it."""
    await asyncio.sleep(max(0.0, window.start - time.perf_counter()))
    _mark(MEASURE_START)
    cpu_start = time.process_time()
    await asyncio.sleep(max(0.0, window.end - time.perf_counter()))
    cpu_used = time.process_time() - cpu_start
    _mark(MEASURE_END)
    return cpu_used


async def run_load(spec: LoadSpec) -> LoadResult:
    connector = aiohttp.TCPConnector(limit=spec.concurrency)
    timeout = aiohttp.ClientTimeout(total=spec.timeout_s)
    tally = Tally()
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        now = time.perf_counter()
        window = Window(now + spec.warmup_s, now + spec.warmup_s + spec.duration_s)
        announcer = asyncio.create_task(_announce(window))
        await asyncio.gather(
            *(_worker(session, spec, window, tally) for _ in range(spec.concurrency))
        )
        client_cpu_s = await announcer
    return summarize(spec, tally, client_cpu_s)


def summarize(spec: LoadSpec, tally: Tally, client_cpu_s: float) -> LoadResult:
    latencies = sorted(tally.latencies_s)
    ttfbs = sorted(tally.ttfbs_s)
    return LoadResult(
        concurrency=spec.concurrency,
        duration_s=spec.duration_s,
        requests=len(latencies),
        requests_per_s=len(latencies) / spec.duration_s,
        p50_ms=percentile_ms(latencies, 50),
        p90_ms=percentile_ms(latencies, 90),
        p99_ms=percentile_ms(latencies, 99),
        mean_ms=sum(latencies) / len(latencies) * 1000 if latencies else None,
        max_ms=latencies[-1] * 1000 if latencies else None,
        errors=tally.errors,
        first_error=tally.first_error,
        client_cpu=client_cpu_s / spec.duration_s,
        ttfb_p50_ms=percentile_ms(ttfbs, 50),
        ttfb_p90_ms=percentile_ms(ttfbs, 90),
        ttfb_p99_ms=percentile_ms(ttfbs, 99),
        ttfb_mean_ms=sum(ttfbs) / len(ttfbs) * 1000 if ttfbs else None,
    )


def _install_uvloop() -> bool:
    try:
        import uvloop
    except ImportError:
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


def _parse_header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected 'Name: value', got {text!r}")
    return name.strip(), value.strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Closed-loop HTTP load generator.")
    parser.add_argument("--url", required=True)
    parser.add_argument("--body-file", required=True, type=Path)
    parser.add_argument("--content-type", default="application/json")
    parser.add_argument("--header", action="append", default=[], type=_parse_header)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds discarded first")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds measured")
    parser.add_argument("--timeout", type=float, default=60.0, help="per-request timeout (s)")
    parser.add_argument(
        "--ttfb", action="store_true", help="also time the first body byte (for streams)"
    )
    parser.add_argument(
        "--expect", help="text every 200 body must contain, else it is an error (e.g. [DONE])"
    )
    args = parser.parse_args(argv)
    _install_uvloop()
    spec = LoadSpec(
        url=args.url,
        body=args.body_file.read_bytes(),
        headers={"Content-Type": args.content_type, **dict(args.header)},
        concurrency=args.concurrency,
        warmup_s=args.warmup,
        duration_s=args.duration,
        timeout_s=args.timeout,
        ttfb=args.ttfb,
        expect=None if args.expect is None else args.expect.encode(),
    )
    result = asyncio.run(run_load(spec))
    print(json.dumps(asdict(result)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
