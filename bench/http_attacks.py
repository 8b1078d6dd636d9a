"""How promptly `/live` answers while one client attacks the HTTP layer of a running gateway.

    python bench/http_attacks.py --url http://127.0.0.1:8080                 # every scenario
    python bench/http_attacks.py --scenarios huge-header --header-mib 64
    python bench/http_attacks.py --scenarios slowloris,idle --connections 1000 --duration 10

Scenarios (each runs for `--duration` seconds, or until its attack ends):

- `baseline`: no attack;
- `huge-header`: one connection sends `GET /live` with one header of `--header-mib` MiB, in
  `--chunk-kib` writes, as fast as it can (or at `--rate-kib` KiB/s); then another, one at a time,
  until `--duration` has passed;
- `slowloris`: `--connections` connections each send a request line, then one header byte every
  `--byte-interval` seconds, never finishing their headers;
- `idle`: `--connections` connections that connect and send nothing.

Meanwhile a probe thread sends `GET /live` on a fresh connection every `--probe-interval` seconds
(blocking sockets, its own thread, so the attack's event loop cannot delay it) and times each answer
until the server closes or the body is complete. A probe without a 200 within `--probe-timeout` s is
a failure. The table also says what the server did to the attack: its answers (431, 408, 503 ...),
how many attacking connections it closed, and how many stayed open.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import statistics
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urlsplit

PROBE = b"GET /live HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
SCENARIOS = ("baseline", "huge-header", "slowloris", "idle")


@dataclass(frozen=True, slots=True)
class Target:
    host: str
    port: int


@dataclass(slots=True)
class ProbeTally:
    latencies_s: list[float] = field(default_factory=list)
    failures: Counter[str] = field(default_factory=Counter)


@dataclass(slots=True)
class AttackTally:
    answers: Counter[str] = field(default_factory=Counter)  # status lines the server sent
    opened: int = 0
    refused: int = 0  # connect() failed
    closed_by_server: int = 0
    still_open: int = 0
    errors: Counter[str] = field(default_factory=Counter)  # how the client side ended
    most_sent: int = 0  # huge-header: the most bytes one request got to send
    longest_s: float = 0.0  # huge-header: the longest one request took


# --- the probe ------------------------------------------------------------------------------------


def probe_once(target: Target, timeout_s: float) -> tuple[float, str | None]:
    """One `GET /live`; (seconds, None) on a 200, else (seconds, what went wrong)."""
    started = time.perf_counter()
    try:
        with socket.create_connection((target.host, target.port), timeout=timeout_s) as sock:
            sock.settimeout(max(0.01, timeout_s - (time.perf_counter() - started)))
            sock.sendall(PROBE)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
                if b"\r\n\r\n" in answer and _body_complete(answer):
                    break
    except TimeoutError:
        return time.perf_counter() - started, "timeout"
    except OSError as exc:
        return time.perf_counter() - started, type(exc).__name__
    elapsed = time.perf_counter() - started
    status = answer.split(b"\r\n", 1)[0].decode(errors="replace")
    return elapsed, None if status.startswith("HTTP/1.1 200") else (status or "empty answer")


def _body_complete(answer: bytes) -> bool:
    head, _, body = answer.partition(b"\r\n\r\n")
    for line in head.lower().split(b"\r\n"):
        if line.startswith(b"content-length:"):
            return len(body) >= int(line.split(b":", 1)[1])
    return False


def run_probes(
    target: Target, interval_s: float, timeout_s: float, stop: threading.Event, tally: ProbeTally
) -> None:
    while not stop.is_set():
        elapsed, failure = probe_once(target, timeout_s)
        if failure is None:
            tally.latencies_s.append(elapsed)
        else:
            tally.failures[failure] += 1
        stop.wait(max(0.0, interval_s - elapsed))


# --- the attacks ----------------------------------------------------------------------------------


async def _status_of(reader: asyncio.StreamReader, tally: AttackTally) -> None:
    """Read what the server sends on an attacking connection until it closes it."""
    first = b""
    with contextlib.suppress(OSError):
        while chunk := await reader.read(65536):
            first = first or chunk
    if first:
        tally.answers[first.split(b"\r\n", 1)[0].decode(errors="replace")] += 1
    tally.closed_by_server += 1


async def huge_headers(target: Target, args: argparse.Namespace, tally: AttackTally) -> None:
    """One huge-header request after another, until `--duration` has passed."""
    until = time.perf_counter() + args.duration
    while True:
        await huge_header(target, args, tally)
        if time.perf_counter() >= until:
            return


async def huge_header(target: Target, args: argparse.Namespace, tally: AttackTally) -> None:
    reader, writer = await asyncio.open_connection(target.host, target.port)
    tally.opened += 1
    watcher = asyncio.create_task(_status_of(reader, tally))
    total = args.header_mib * 1024 * 1024
    chunk = b"a" * (args.chunk_kib * 1024)
    started = time.perf_counter()
    sent = 0
    try:
        writer.write(b"GET /live HTTP/1.1\r\nHost: bench\r\nX-Huge: ")
        while sent < total and not watcher.done():
            writer.write(chunk)
            sent += len(chunk)
            await writer.drain()
            if args.rate_kib:
                await asyncio.sleep(len(chunk) / (args.rate_kib * 1024))
        if not watcher.done():
            writer.write(b"\r\nConnection: close\r\n\r\n")
            await writer.drain()
        await asyncio.wait_for(watcher, timeout=args.probe_timeout + 30)
    except (OSError, TimeoutError) as exc:
        tally.errors[type(exc).__name__] += 1
    finally:
        writer.close()
        watcher.cancel()
    tally.most_sent = max(tally.most_sent, sent)
    tally.longest_s = max(tally.longest_s, time.perf_counter() - started)


async def _hold(
    target: Target, args: argparse.Namespace, tally: AttackTally, trickle: bool, until: float
) -> None:
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(target.host, target.port), timeout=5
        )
    except (OSError, TimeoutError):
        tally.refused += 1
        return
    tally.opened += 1
    watcher = asyncio.create_task(_status_of(reader, tally))
    try:
        if trickle:
            writer.write(b"GET /live HTTP/1.1\r\n")
        while not watcher.done() and time.perf_counter() < until:
            if trickle:
                writer.write(b"X")  # one byte of a header name that never ends
            await asyncio.wait(
                [watcher], timeout=min(args.byte_interval, until - time.perf_counter())
            )
        if not watcher.done():
            tally.still_open += 1
    except OSError:
        pass
    finally:
        watcher.cancel()
        writer.close()


async def many(target: Target, args: argparse.Namespace, tally: AttackTally, trickle: bool) -> None:
    until = time.perf_counter() + args.duration
    holders = []
    for index in range(args.connections):
        holders.append(asyncio.create_task(_hold(target, args, tally, trickle, until)))
        if index % 50 == 49:
            await asyncio.sleep(0.01)  # spread the connects; a listen backlog is finite
    await asyncio.gather(*holders)


async def run_attack(scenario: str, target: Target, args: argparse.Namespace) -> AttackTally:
    tally = AttackTally()
    if scenario == "baseline":
        await asyncio.sleep(args.duration)
    elif scenario == "huge-header":
        await huge_headers(target, args, tally)
    else:
        await many(target, args, tally, trickle=scenario == "slowloris")
    return tally


# --- one scenario, the table ----------------------------------------------------------------------


def run_scenario(scenario: str, target: Target, args: argparse.Namespace) -> str:
    probes = ProbeTally()
    stop = threading.Event()
    prober = threading.Thread(
        target=run_probes,
        args=(target, args.probe_interval, args.probe_timeout, stop, probes),
        daemon=True,
    )
    started = time.perf_counter()
    prober.start()
    try:
        attack = asyncio.run(run_attack(scenario, target, args))
    finally:
        stop.set()
        prober.join()
    elapsed = time.perf_counter() - started
    time.sleep(args.settle)  # let the server close what the attack left
    return _row(scenario, elapsed, probes, attack)


def _row(scenario: str, elapsed: float, probes: ProbeTally, attack: AttackTally) -> str:
    ms = sorted(latency * 1000 for latency in probes.latencies_s)
    if ms:
        p50 = f"{statistics.median(ms):.1f}"
        p99 = f"{ms[min(len(ms) - 1, int(len(ms) * 0.99))]:.1f}"
        worst = f"{ms[-1]:.1f}"
    else:
        p50 = p99 = worst = "-"
    failures = ", ".join(f"{count}× {kind}" for kind, count in probes.failures.items()) or "0"
    answers = ", ".join(f"{count}× {line}" for line, count in attack.answers.items()) or "none"
    server = (
        f"opened {attack.opened}, refused {attack.refused}, closed by server "
        f"{attack.closed_by_server}, open at end {attack.still_open}; answers: {answers}"
    )
    if attack.errors:
        server += "; client errors: " + ", ".join(f"{n}× {e}" for e, n in attack.errors.items())
    if attack.most_sent:
        server += f"; most sent by one request {attack.most_sent / 2**20:.2f} MiB"
        server += f", longest request {attack.longest_s:.2f} s"
    return (
        f"| {scenario} | {elapsed:.1f} | {len(ms)} | {p50} | {p99} | {worst} | {failures} "
        f"| {server} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per scenario")
    parser.add_argument("--connections", type=int, default=500)
    parser.add_argument("--byte-interval", type=float, default=0.5)
    parser.add_argument("--header-mib", type=int, default=64)
    parser.add_argument("--chunk-kib", type=int, default=64)
    parser.add_argument("--rate-kib", type=float, default=0.0, help="0: as fast as possible")
    parser.add_argument("--probe-interval", type=float, default=0.1)
    parser.add_argument("--probe-timeout", type=float, default=5.0)
    parser.add_argument("--settle", type=float, default=1.0, help="pause between scenarios")
    args = parser.parse_args()
    url = urlsplit(args.url)
    target = Target(url.hostname or "127.0.0.1", url.port or 80)
    scenarios = [name.strip() for name in args.scenarios.split(",") if name.strip()]
    unknown = set(scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios {sorted(unknown)}; choose from {SCENARIOS}")
    print(
        "| scenario | s | /live 200s | p50 ms | p99 ms | max ms | /live failures "
        "| what the server did to the attack |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for scenario in scenarios:
        print(run_scenario(scenario, target, args), flush=True)


if __name__ == "__main__":
    main()
