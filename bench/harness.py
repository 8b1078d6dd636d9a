"""What the benchmark scripts (`invocations.py`, `llm.py`) share: the supervisor around the servers.

Starting and stopping pinned process groups, CPU accounting from /proc, readiness, running the load
generator (`loadgen.py`) and writing the results. Each concept lives here once so that both
benchmarks measure, pin and clean up in the same way; what a benchmark measures stays in its
script. Imported as a sibling module (`from harness import ...`), as the scripts are run as files.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, Generic, Protocol, TypeVar

from loadgen import MEASURE_END, MEASURE_START, LoadResult

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
LOADGEN = BENCH_DIR / "loadgen.py"
HOST = "127.0.0.1"
LOG_TAIL_LINES = 40
STOP_GRACE_S = 10.0
PORT_ATTEMPTS = 3
NOISY_SHARE = 0.05  # other processes on one of our cores beyond this: the row is disturbed

T = TypeVar("T")
S = TypeVar("S")


class BenchError(Exception):
    """A server or the load generator misbehaved; the message says how."""


# --- command line ---------------------------------------------------------------------------------


def int_list(text: str) -> tuple[int, ...]:
    """`--rows`/`--concurrency`: comma-separated positive integers, as an argparse type."""
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from exc
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def name_list(text: str, known: Sequence[str]) -> tuple[str, ...]:
    """`--arms`: comma-separated names out of `known`, each at most once (as typed)."""
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [name for name in names if name not in known]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"unknown arm(s) {unknown}; choose from {known}")
    if len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"an arm is named twice in {text!r}")
    return names


def add_window_args(parser: argparse.ArgumentParser) -> None:
    """The measuring-window flags both benchmarks take, with the same meaning."""
    parser.add_argument("--warmup", type=float, help="seconds discarded per scenario (1)")
    parser.add_argument("--duration", type=float, help="seconds measured per scenario (5)")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 0.25 s warmup, 1 s measured"
    )


def pick(given: T | None, *, quick: bool, quick_value: T, default: T) -> T:
    """An explicit flag wins; else the `--quick` value or the default."""
    if given is not None:
        return given
    return quick_value if quick else default


# --- processes: pinning, tracking, stopping -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Cores:
    server: int | None  # None: not pinned (fewer than two usable cores)
    client: int | None


def choose_cores(unpinned: str = "server and client") -> Cores:
    """The first usable core for the server(s), the second for the client side."""
    usable = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if len(usable) < 2:
        print(f"warning: fewer than 2 usable cores; {unpinned} are not pinned", file=sys.stderr)
        return Cores(None, None)
    return Cores(server=usable[0], client=usable[1])


def pin_supervisor(cores: Cores) -> None:
    """Keep this supervisor off the server's core (it shares the client's)."""
    if cores.client is not None:
        os.sched_setaffinity(0, {cores.client})


_STARTED: list[subprocess.Popen[Any]] = []


def spawn(command: list[str], core: int | None, **popen: Any) -> subprocess.Popen[Any]:
    """Start `command` in a new session, pinned to `core` (taskset, else sched_setaffinity).

    A session of its own lets `stop` kill the whole group (workers, reloaders) at once.
    """
    preexec: Callable[[], None] | None = None
    if core is not None:
        taskset = shutil.which("taskset")
        if taskset:
            command = [taskset, "-c", str(core), *command]
        else:

            def preexec() -> None:
                os.sched_setaffinity(0, {core})

    process = subprocess.Popen(command, start_new_session=True, preexec_fn=preexec, **popen)
    _STARTED.append(process)
    return process


def stop(process: subprocess.Popen[Any]) -> None:
    """SIGTERM the process group we started, then SIGKILL whatever is left of it."""
    if process in _STARTED:
        _STARTED.remove(process)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(STOP_GRACE_S)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def stop_all() -> None:
    """Stop every process `spawn` started and nobody stopped yet (the last resort on failure)."""
    while _STARTED:
        stop(_STARTED.pop())


def exit_on_signal(signum: int, frame: FrameType | None) -> None:
    """A SIGTERM handler: unwinds through the `finally` that stops every server."""
    raise SystemExit(128 + signum)


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The end of a log, for error messages."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


# --- CPU accounting from /proc -------------------------------------------------------------------

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat(pid_dir: Path) -> tuple[int, int] | None:
    """(parent pid, user+system CPU ticks) of one process."""
    try:
        fields = (pid_dir / "stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[1]), int(fields[11]) + int(fields[12])


def process_tree_cpu_s(root: int) -> float | None:
    """CPU seconds used so far by `root` and its descendants; None without /proc."""
    proc = Path("/proc")
    if not proc.is_dir():
        return None
    stats = {int(d.name): s for d in proc.iterdir() if d.name.isdigit() and (s := _stat(d))}
    tree, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, (ppid, _) in stats.items() if ppid == parent and pid not in tree]
        tree.update(children)
        frontier.extend(children)
    return sum(stats[pid][1] for pid in tree if pid in stats) / _CLOCK_TICKS


def core_busy_s(core: int | None) -> float | None:
    """CPU seconds one core has been busy (anything, steal included), from /proc/stat."""
    if core is None:
        return None
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        name, *ticks = line.split()
        if name == f"cpu{core}":
            idle, iowait = int(ticks[3]), int(ticks[4])
            return (sum(int(t) for t in ticks[:8]) - idle - iowait) / _CLOCK_TICKS
    return None


def rate(start: float | None, end: float | None, wall_s: float) -> float | None:
    """A share of one core from two CPU-second readings; None if either is unknown."""
    return None if start is None or end is None or wall_s <= 0 else (end - start) / wall_s


def core_busy_shares(cores: Cores, seconds: float = 1.0) -> dict[str, float | None]:
    """How busy each of our two cores is over the next `seconds`, whoever runs on it."""
    start = time.monotonic(), core_busy_s(cores.server), core_busy_s(cores.client)
    time.sleep(seconds)
    end = time.monotonic(), core_busy_s(cores.server), core_busy_s(cores.client)
    wall_s = end[0] - start[0]
    return {
        "server_core": rate(start[1], end[1], wall_s),
        "client_core": rate(start[2], end[2], wall_s),
    }


def warn_if_busy(busy_before: dict[str, float | None]) -> None:
    """Say so on stderr when a core is busy before the run: its rows will be noisy."""
    busy = {core: share for core, share in busy_before.items() if (share or 0) > NOISY_SHARE}
    if busy:
        shares = ", ".join(f"{core} {fmt_share(share)}" for core, share in busy.items())
        print(
            f"warning: the machine is busy before the run ({shares}); expect noise", file=sys.stderr
        )


# --- servers --------------------------------------------------------------------------------------


class ArmLike(Protocol):
    """What the supervisor needs of an arm: a name and a path that answers 200 once ready."""

    @property
    def name(self) -> str: ...

    @property
    def ready_path(self) -> str: ...


A = TypeVar("A", bound=ArmLike)


@dataclass(frozen=True, slots=True)
class Server(Generic[A]):
    arm: A
    process: subprocess.Popen[Any]
    url: str
    log: Path
    startup_s: float


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http(
    url: str,
    *,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 5.0,
) -> tuple[int, bytes]:
    """(status, body) of one request, error statuses included; transport errors raise OSError.

    Never through a proxy: every server is on this host.
    """
    request = urllib.request.Request(url, data=body, headers=headers or {})
    try:
        with _NO_PROXY.open(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def post_checked(
    url: str, body: bytes, headers: dict[str, str], what: str, log: Path
) -> tuple[int, str]:
    """(status, text) of one JSON POST before the load; a transport error is a BenchError."""
    try:
        status, answer = http(
            url, body=body, headers={"Content-Type": "application/json", **headers}, timeout=30
        )
    except OSError as exc:
        raise BenchError(f"{what} failed: {exc}\n{tail(log)}") from exc
    return status, answer.decode("utf-8", errors="replace")


def wait_ready(server: Server[A], timeout_s: float, started: float) -> float:
    """Seconds from `started` until the ready path answers 200."""
    deadline = started + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise BenchError(
                f"{server.arm.name} exited with code {server.process.returncode} before it was"
                f" ready; last lines of {server.log}:\n{tail(server.log)}"
            )
        with contextlib.suppress(OSError):
            if http(server.url + server.arm.ready_path, timeout=1.0)[0] == 200:
                return time.monotonic() - started
        time.sleep(0.05)
    raise BenchError(
        f"{server.arm.name} was not ready after {timeout_s:.0f} s; last lines of {server.log}:\n"
        f"{tail(server.log)}"
    )


@dataclass(frozen=True, slots=True)
class Launch:
    """Where and how to start a server: its folder for logs, its environment, core and patience."""

    directory: Path
    env: dict[str, str]
    core: int | None
    timeout_s: float


def start_server(arm: A, command: Callable[[int], list[str]], launch: Launch) -> Server[A]:
    """A ready server on a free port; retried on another port if someone took the chosen one."""
    for attempt in range(1, PORT_ATTEMPTS + 1):
        port = free_port()
        log = launch.directory / f"{arm.name}-{port}.log"
        argv = command(port)
        with log.open("wb") as log_file:
            started = time.monotonic()
            process = spawn(
                argv, launch.core, stdout=log_file, stderr=subprocess.STDOUT, env=launch.env
            )
        server = Server(arm, process, f"http://{HOST}:{port}", log, float("nan"))
        try:
            startup_s = wait_ready(server, launch.timeout_s, started)
            if process.poll() is not None:  # someone else's server answered on our port
                raise BenchError(f"{arm.name} exited; last lines:\n{tail(log)}")
            return dataclasses.replace(server, startup_s=startup_s)
        except BenchError:
            stop(process)
            if attempt == PORT_ATTEMPTS or "address already in use" not in tail(log):
                raise
            print(f"{arm.name}: port taken, retrying on another port", file=sys.stderr)
    raise AssertionError("unreachable")


@contextlib.contextmanager
def running(arm: A, command: Callable[[int], list[str]], launch: Launch) -> Iterator[Server[A]]:
    """A ready server for the `with` block, stopped after it however the block ends."""
    server = start_server(arm, command, launch)
    try:
        yield server
    finally:
        stop(server.process)


# --- the load generator ---------------------------------------------------------------------------


def loadgen_command(
    url: str,
    body_file: Path,
    concurrency: int,
    warmup_s: float,
    duration_s: float,
    headers: dict[str, str],
    extra: Sequence[str] = (),
) -> list[str]:
    """argv of one `loadgen.py` run; `extra` goes before the headers."""
    command = [sys.executable, str(LOADGEN), "--url", url, "--body-file", str(body_file),
               "--concurrency", str(concurrency),
               "--warmup", str(warmup_s), "--duration", str(duration_s), *extra]  # fmt: skip
    for name, value in headers.items():
        command += ["--header", f"{name}: {value}"]
    return command


def run_loadgen(
    command: list[str], core: int | None, log: Path, mark: Callable[[], S]
) -> tuple[LoadResult, S, S]:
    """Run the load generator to its end; `mark()` is sampled as its measured window opens and
    closes (it prints MEASURE_START/MEASURE_END), so the CPU figures cover that window only."""
    marks: dict[str, S] = {}
    result_line = ""
    with log.open("wb") as stderr:
        process = spawn(command, core, stdout=subprocess.PIPE, stderr=stderr, text=True)
    try:
        assert process.stdout is not None
        for line in process.stdout:
            line = line.strip()
            if line in (MEASURE_START, MEASURE_END):
                marks[line] = mark()
            elif line:
                result_line = line
        process.wait()
    finally:
        stop(process)
    if process.returncode != 0 or not result_line or len(marks) != 2:
        raise BenchError(f"load generator exited with {process.returncode}:\n{tail(log)}")
    return LoadResult.from_json(result_line), marks[MEASURE_START], marks[MEASURE_END]


# --- reporting ------------------------------------------------------------------------------------


def fmt_ms(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def fmt_share(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.0f}%"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table; the first column left-aligned, the others right-aligned."""
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def progress_line(columns: Iterable[str], row: Iterable[str]) -> str:
    """One result row as `column value, ...` for stderr while the run goes on."""
    return ", ".join(f"{c} {v}" for c, v in zip(columns, row, strict=True))


def _git(*args: str) -> str:
    done = subprocess.run(["git", *args], cwd=BENCH_DIR, check=True, capture_output=True, text=True)
    return done.stdout.strip()


def git_revision() -> str | None:
    """The checkout's short revision, `-dirty` if it has uncommitted changes; None without git."""
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        dirty = "-dirty" if _git("status", "--porcelain") else ""
        return _git("rev-parse", "--short", "HEAD") + dirty
    return None


def utc_stamp() -> str:
    """The run's timestamp, as used in result file names."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")


def machine() -> dict[str, Any]:
    """The machine facts every result file starts its `machine` section with."""
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }


def write_results(name: str, stamp: str, document: dict[str, Any]) -> Path:
    """`bench/results/<name>-<stamp>.json`."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}-{stamp}.json"
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return path


# --- the run --------------------------------------------------------------------------------------


def supervise(
    work: Callable[[], None],
    scratch: Path,
    show_partial: Callable[[], None],
    finally_: Callable[[], None] | None = None,
) -> bool:
    """Run `work`; on a BenchError report it, show what was measured and keep the logs.

    Every process we started is stopped whatever happens; the scratch folder goes on success.
    Returns whether `work` succeeded.
    """
    failed = False
    try:
        work()
    except BenchError as exc:
        failed = True
        print(f"\nbenchmark failed: {exc}\n(logs kept in {scratch})", file=sys.stderr)
        show_partial()
        return False
    finally:
        stop_all()
        if finally_ is not None:
            finally_()
        if not failed:
            shutil.rmtree(scratch, ignore_errors=True)
    return True


def run_main(main: Callable[[], int]) -> int:
    """The scripts' entry point: Ctrl-C ends the run cleanly (servers stopped by `supervise`)."""
    try:
        return main()
    except KeyboardInterrupt:
        print("\ninterrupted; every server was stopped", file=sys.stderr)
        return 130
