"""Benchmark the OpenAI-compatible chat path: the gateway and the LiteLLM proxy against a baseline.

Every arm calls `/v1/chat/completions` on a zero-delay fake OpenAI server
(`python -m tests.fakes.openai_upstream`, its own process):

- `direct`: the load generator straight at the fake (the baseline);
- `gateway`: `python -m gateway serve`, auth on, one worker, one `foundation` endpoint;
- `litellm`: the LiteLLM proxy (`litellm --num_workers 1`), master key on, installed on demand
  into `bench/.venv-litellm`.

Each server is pinned to core 0; the fake upstream and the load generator (`bench/loadgen.py`, run
as its own process) share core 1. Per arm: non-stream chat at each `--concurrency` (default 1, 32,
128) and a streamed chat at concurrency 1 (time to the first body byte, and the whole stream).
"Added" figures are an arm's minus `direct`'s at concurrency 1. A Markdown table goes to stdout,
every number to `bench/results/llm-<timestamp>.json`.

    .venv/bin/python bench/llm.py                          # full run (a few minutes)
    .venv/bin/python bench/llm.py --quick                  # smoke run
    .venv/bin/python bench/llm.py --arms direct,gateway --concurrency 1,32 --duration 10
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import harness
import yaml
from harness import (
    BENCH_DIR,
    HOST,
    NOISY_SHARE,
    BenchError,
    Cores,
    Launch,
    core_busy_s,
    fmt_ms,
    fmt_share,
    process_tree_cpu_s,
    rate,
    table,
    tail,
)
from loadgen import LoadResult

REPO_DIR = BENCH_DIR.parent


ENDPOINT = "bench-chat"  # what clients of the gateway and of the proxy call
UPSTREAM_MODEL = "fake-model"  # what the fake upstream is asked for
UPSTREAM_KEY = "sk-fake-upstream"  # the fake accepts any key; both servers send this one
PROMPT = "hello from the benchmark"  # the fake echoes it: "echo: hello from the benchmark"
CHAT_EXPECT = "echo: " + PROMPT  # in every non-stream answer
STREAM_EXPECT = "[DONE]"  # at the end of every complete stream
PRICING = {"input_per_million": 1, "output_per_million": 2}

# Exactly this LiteLLM release. Never 1.82.7, 1.82.8 or 1.107.0 (compromised releases) nor
# 1.81.16-1.83.6 (a pre-auth SQL injection in the proxy).
LITELLM_VERSION = "1.110.2"
LITELLM_VENV = BENCH_DIR / ".venv-litellm"
LITELLM_INSTALL_TIMEOUT_S = 1800.0
# Pinned by `litellm[proxy]==1.110.2` at versions the package index does not have; the install
# leaves them out (the first is not on the index at all: asking for it invites a look-alike; the
# others hold DB migrations and enterprise hooks that a proxy without a database does not use).
LITELLM_UNAVAILABLE = ("litellm-proxy", "litellm-proxy-extras", "litellm-enterprise")

STREAM_CONCURRENCY = 1
BUSY_CORE_SHARE = 0.9  # core 1 (fake upstream + load generator) beyond this: the client side limits

# The targets the gateway is held to (printed beside the table).
TARGET_ADDED_P50_MS = 0.5  # at concurrency 1
TARGET_RPS = 3000.0
TARGET_RPS_CONCURRENCY = 32
TARGET_TTFB_ADDED_MS = 1.0

# gateway: auth and the usage ledger on (its default, durability "write"); -limits adds request,
# token and concurrency limits and a budget on the key (never reached), counted in memory or Redis;
# -fsync makes the ledger fsync each acknowledged request (group commit); -traced sends every
# call as an MLflow trace (-traced-10: one call in ten) to a fake ingestion endpoint.
GATEWAY_VARIANTS = (
    "gateway",
    "gateway-limits",
    "gateway-redis",
    "gateway-fsync",
    "gateway-traced",
    "gateway-traced-10",
)
TRACE_SAMPLE_RATES = {"gateway-traced": 1.0, "gateway-traced-10": 0.1}
ARM_NAMES = ("direct", *GATEWAY_VARIANTS, "litellm")
DEFAULT_ARMS = ("direct", "gateway", "gateway-limits", "gateway-redis", "litellm")
REDIS_URL = "redis://127.0.0.1:6379/0"
BENCH_LIMITS = {
    "requests_per_minute": 10_000_000,
    "tokens_per_minute": 1_000_000_000,
    "max_concurrent": 10_000,
}


@dataclass(frozen=True, slots=True)
class Workspace:
    """What every server shares: a scratch folder, the API key, the environment."""

    directory: Path
    api_key: str
    env: dict[str, str]


@dataclass(frozen=True, slots=True)
class Arm:
    name: str
    ready_path: str  # answers 200 once the server is ready
    command: Callable[[Workspace, int], list[str]]  # (workspace, port) -> argv


Server = harness.Server[Arm]


def running(
    arm: Arm, workspace: Workspace, core: int | None, timeout_s: float
) -> contextlib.AbstractContextManager[Server]:
    launch = Launch(workspace.directory, workspace.env, core, timeout_s)
    return harness.running(arm, lambda port: arm.command(workspace, port), launch)


# --- settings -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Settings:
    arms: tuple[str, ...]
    concurrency: tuple[int, ...]
    stream: bool
    warmup_s: float
    duration_s: float
    ready_timeout_s: float
    quiet_wait_s: float
    retries: int
    litellm_venv: str


def _int_list(text: str) -> tuple[int, ...]:
    return tuple(dict.fromkeys(harness.int_list(text)))  # each concurrency once


def _arm_list(text: str) -> tuple[str, ...]:
    names = harness.name_list(text, ARM_NAMES)
    return tuple(name for name in ARM_NAMES if name in names)  # direct first: the baseline


def parse_settings(argv: Sequence[str] | None) -> Settings:
    parser = argparse.ArgumentParser(
        description="Benchmark /v1/chat/completions: direct vs gateway vs LiteLLM proxy."
    )
    parser.add_argument(
        "--arms", type=_arm_list, default=DEFAULT_ARMS, help=f"of {','.join(ARM_NAMES)}"
    )
    parser.add_argument(
        "--concurrency",
        type=_int_list,
        default=(1, 32, 128),
        help="client workers for non-stream chat (1,32,128); 1 gives the added latency",
    )
    parser.add_argument(
        "--no-stream", dest="stream", action="store_false", help="skip the streamed chat"
    )
    harness.add_window_args(parser)
    parser.add_argument("--ready-timeout", type=float, default=180.0, help="seconds to come up")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=30.0,
        help="before each scenario, wait up to this many seconds for other processes to leave"
        " the two cores (0: do not wait)",
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=2,
        help="rerun a scenario that other processes disturbed up to this many times, keeping the"
        " quietest run (2; 0 with --quick)",
    )
    parser.add_argument(
        "--litellm-venv",
        default=str(LITELLM_VENV),
        help="where LiteLLM is (or gets) installed (bench/.venv-litellm)",
    )
    args = parser.parse_args(argv)
    return Settings(
        arms=args.arms,
        concurrency=args.concurrency,
        stream=args.stream,
        warmup_s=harness.pick(args.warmup, quick=args.quick, quick_value=0.25, default=1.0),
        duration_s=harness.pick(args.duration, quick=args.quick, quick_value=1.0, default=5.0),
        ready_timeout_s=args.ready_timeout,
        quiet_wait_s=0.0 if args.quick else args.quiet_wait,
        retries=0 if args.quick else max(0, args.retries),
        litellm_venv=args.litellm_venv,
    )


# --- LiteLLM, installed on demand -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LiteLLMInstall:
    executable: str | None  # the `litellm` script; None: the arm is skipped
    how: str  # what was done, or why the arm is skipped


def _installed_litellm(venv: Path) -> str | None:
    python = venv / "bin" / "python"
    if not python.exists():
        return None
    found = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
        capture_output=True,
        text=True,
        check=False,
    )
    if found.returncode != 0:
        return None
    return found.stdout.strip() or None


def _pip(venv: Path, requirements: list[str], log: Path) -> bool:
    command = [str(venv / "bin" / "python"), "-m", "pip", "install", *requirements]
    print(f"  $ {' '.join(command)}", file=sys.stderr)
    with log.open("a", encoding="utf-8") as out:
        out.write(f"\n$ {' '.join(command)}\n")
        out.flush()
        try:
            done = subprocess.run(
                command,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=LITELLM_INSTALL_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired:
            out.write(f"\n(timed out after {LITELLM_INSTALL_TIMEOUT_S:.0f} s)\n")
            return False
    return done.returncode == 0


def _proxy_requirements(venv: Path) -> list[str]:
    """The `proxy` extra of the installed litellm, less the distributions the index lacks."""
    script = (
        "import importlib.metadata as m\n"
        "from pip._vendor.packaging.requirements import Requirement\n"
        "for text in m.requires('litellm') or ():\n"
        "    r = Requirement(text)\n"
        "    if r.marker and r.marker.evaluate({'extra': 'proxy'})"
        " and not r.marker.evaluate({'extra': ''}):\n"
        "        r.marker = None\n"
        "        print(r)\n"
    )
    found = subprocess.run(
        [str(venv / "bin" / "python"), "-c", script], capture_output=True, text=True, check=True
    )
    unavailable = set(LITELLM_UNAVAILABLE)
    return [
        line.strip()
        for line in found.stdout.splitlines()
        if (name := re.match(r"[A-Za-z0-9._-]+", line.strip()))
        and re.sub(r"[._-]+", "-", name.group()).lower() not in unavailable
    ]


def ensure_litellm(venv: Path) -> LiteLLMInstall:
    """`litellm` of exactly LITELLM_VERSION in `venv`, installing it the first time."""
    executable = venv / "bin" / "litellm"
    if _installed_litellm(venv) == LITELLM_VERSION and executable.exists():
        return LiteLLMInstall(str(executable), f"litellm {LITELLM_VERSION} already in {venv}")
    print(
        f"installing litellm=={LITELLM_VERSION} + its proxy extra into {venv} (first run only)",
        file=sys.stderr,
    )
    if not (venv / "bin" / "python").exists():
        python3 = shutil.which("python3") or sys.executable
        made = subprocess.run(
            [python3, "-m", "venv", str(venv)], capture_output=True, text=True, check=False
        )
        if made.returncode != 0:
            return LiteLLMInstall(None, f"`python3 -m venv {venv}` failed: {made.stderr.strip()}")
    log = venv / "install.log"
    log.write_text("", encoding="utf-8")
    print(f"  pip's output goes to {log}", file=sys.stderr)
    # Never `pip install 'litellm[proxy]==…'`: that extra pins `litellm-proxy`, which the
    # package index does not have, so whoever published that name would get code run here.
    # Install litellm itself, then the rest of its proxy extra by name.
    pinned = f"litellm=={LITELLM_VERSION}"
    if not _pip(venv, [pinned], log):
        return LiteLLMInstall(None, f"pip install '{pinned}' failed:\n{tail(log)}")
    try:
        extra = _proxy_requirements(venv)
    except subprocess.CalledProcessError as exc:
        return LiteLLMInstall(None, f"cannot read litellm's proxy extra: {exc.stderr}")
    if not _pip(venv, [pinned, *extra], log):
        return LiteLLMInstall(None, f"the proxy extra failed to install:\n{tail(log)}")
    how = (
        f"pip install 'litellm=={LITELLM_VERSION}' + its `proxy` extra without"
        f" {', '.join(LITELLM_UNAVAILABLE)} (pinned at versions the index does not have)"
    )
    version = _installed_litellm(venv)
    if version != LITELLM_VERSION or not executable.exists():
        return LiteLLMInstall(
            None, f"after `{how}`, {venv} holds litellm {version}, not {LITELLM_VERSION}"
        )
    return LiteLLMInstall(str(executable), how)


# --- the servers ----------------------------------------------------------------------------------


def _python_env(base: dict[str, str]) -> dict[str, str]:
    """For our own Python processes: the repository importable (`tests.fakes`)."""
    path = os.pathsep.join(p for p in (str(REPO_DIR), base.get("PYTHONPATH", "")) if p)
    return {**base, "PYTHONPATH": path}


def upstream_arm() -> Arm:
    def command(workspace: Workspace, port: int) -> list[str]:
        return [sys.executable, "-m", "tests.fakes.openai_upstream", "--host", HOST,
                "--port", str(port)]  # fmt: skip

    return Arm("fake-upstream", ready_path="/v1/models", command=command)


def trace_sink_arm() -> Arm:
    def command(workspace: Workspace, port: int) -> list[str]:
        return [sys.executable, "-m", "tests.fakes.trace_sink", "--host", HOST,
                "--port", str(port)]  # fmt: skip

    return Arm("trace-sink", ready_path="/health", command=command)


def gateway_arm(upstream_url: str, variant: str = "gateway", trace_sink: str = "") -> Arm:
    def command(workspace: Workspace, port: int) -> list[str]:
        key_digest = hashlib.sha256(workspace.api_key.encode()).hexdigest()
        key: dict[str, object] = {"id": "bench", "sha256": key_digest}
        config: dict[str, object] = {}
        if variant in ("gateway-limits", "gateway-redis"):
            key["limits"] = BENCH_LIMITS
            key["budget"] = {"usd_per_day": 1_000_000}
        if variant == "gateway-redis":
            config["limits"] = {"store": REDIS_URL}
        if variant == "gateway-fsync":
            config["usage"] = {"durability": "fsync"}
        if variant in TRACE_SAMPLE_RATES:
            config["tracing"] = {
                "mlflow": {"tracking_uri": trace_sink, "experiment_id": "1"},
                "sample_rate": TRACE_SAMPLE_RATES[variant],
            }
        config |= {
            "auth": {"keys": [key]},
            "endpoints": [
                {
                    "name": ENDPOINT,
                    "type": "foundation",
                    "task": "chat",
                    "deployments": [
                        {
                            "api_base": upstream_url + "/v1",
                            "model": UPSTREAM_MODEL,
                            "api_key": UPSTREAM_KEY,
                        }
                    ],
                    "pricing": PRICING,
                }
            ],
        }
        path = workspace.directory / "gateway.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        return [sys.executable, "-m", "gateway", "serve", "--config", str(path), "--host", HOST,
                "--port", str(port), "--workers", "1"]  # fmt: skip

    return Arm(variant, ready_path="/ready", command=command)


def litellm_arm(upstream_url: str, executable: str) -> Arm:
    def command(workspace: Workspace, port: int) -> list[str]:
        config = {
            "model_list": [
                {
                    "model_name": ENDPOINT,
                    "litellm_params": {
                        "model": f"openai/{UPSTREAM_MODEL}",
                        "api_base": upstream_url + "/v1",
                        "api_key": UPSTREAM_KEY,
                    },
                }
            ],
            "general_settings": {"master_key": workspace.api_key},
            "litellm_settings": {"telemetry": False},
        }
        path = workspace.directory / "litellm.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        return [executable, "--config", str(path), "--host", HOST, "--port", str(port),
                "--num_workers", "1"]  # fmt: skip

    return Arm("litellm", ready_path="/health/liveliness", command=command)


def litellm_env(base: dict[str, str]) -> dict[str, str]:
    env = {
        name: value
        for name, value in base.items()
        if name not in ("DATABASE_URL", "PYTHONPATH", "VIRTUAL_ENV", "LITELLM_MASTER_KEY")
    }
    env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"  # never fetch the price map
    # LiteLLM's production setting; it also keeps uvicorn's access log (one line per request)
    # off, as it is in the gateway.
    env["LITELLM_LOG"] = "ERROR"
    return env


# --- request bodies -------------------------------------------------------------------------------


def chat_body(model: str, stream: bool) -> bytes:
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": 16,
    }
    if stream:
        body["stream"] = True
    return json.dumps(body).encode()


@dataclass(frozen=True, slots=True)
class Scenario:
    kind: str  # "chat" (one JSON answer) or "stream" (server-sent events)
    concurrency: int

    @property
    def stream(self) -> bool:
        return self.kind == "stream"

    @property
    def expect(self) -> str:
        return STREAM_EXPECT if self.stream else CHAT_EXPECT


def scenarios(settings: Settings) -> list[Scenario]:
    found = [Scenario("chat", c) for c in settings.concurrency if c == 1]
    if settings.stream:
        found.append(Scenario("stream", STREAM_CONCURRENCY))
    found += [Scenario("chat", c) for c in settings.concurrency if c != 1]
    return found


@dataclass(frozen=True, slots=True)
class Target:
    """Where one arm's load goes."""

    arm: str
    server: Server  # the process under test (the fake itself for `direct`)
    url: str  # the chat completions URL
    model: str
    headers: dict[str, str]
    bodies: dict[str, Path]  # kind -> body file


def check_target(target: Target) -> None:
    """One request of each kind before the load: a 200 with the echo, or a clear failure."""
    for kind, body_file in target.bodies.items():
        scenario = Scenario(kind, 1)
        status, text = harness.post_checked(
            target.url,
            body_file.read_bytes(),
            target.headers,
            f"{target.arm}: {kind} request",
            target.server.log,
        )
        if (
            status != 200
            or scenario.expect not in text
            or (kind == "stream" and "echo" not in text)
        ):
            raise BenchError(
                f"{target.arm}: a {kind} request answered {status} (expected 200 with"
                f" {scenario.expect!r}): {text[:1000]}\n"
                f"last lines of {target.server.log}:\n{tail(target.server.log)}"
            )


# --- one scenario ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CpuSample:
    wall_s: float
    server_s: float | None
    upstream_s: float | None
    core0_s: float | None
    core1_s: float | None


def cpu_sample(server_pid: int, upstream_pid: int | None, cores: Cores) -> CpuSample:
    return CpuSample(
        time.monotonic(),
        process_tree_cpu_s(server_pid),
        None if upstream_pid is None else process_tree_cpu_s(upstream_pid),
        core_busy_s(cores.server),
        core_busy_s(cores.client),
    )


@dataclass(frozen=True, slots=True)
class Cpu:
    """Shares of one core over the measured window."""

    server: float | None  # the server under test (the fake upstream for `direct`)
    upstream: float | None  # the fake upstream behind a gateway/proxy
    client: float  # the load generator
    server_core: float | None  # core 0 busy, whatever ran on it
    client_core: float | None  # core 1 busy: load generator + fake upstream (+ this supervisor)
    other_on_server_core: float | None  # core 0 busy beyond the server: noise
    other_on_client_core: float | None  # core 1 busy beyond load generator + fake: noise


def cpu_over(start: CpuSample, end: CpuSample, client: float, server_on_core0: bool) -> Cpu:
    wall_s = end.wall_s - start.wall_s
    server = rate(start.server_s, end.server_s, wall_s)
    upstream = rate(start.upstream_s, end.upstream_s, wall_s)
    core0 = rate(start.core0_s, end.core0_s, wall_s)
    core1 = rate(start.core1_s, end.core1_s, wall_s)
    on_core0 = (server or 0.0) if server_on_core0 else 0.0
    on_core1 = client + (upstream or 0.0) + (0.0 if server_on_core0 else (server or 0.0))
    return Cpu(
        server=server,
        upstream=upstream,
        client=client,
        server_core=core0,
        client_core=core1,
        other_on_server_core=None if core0 is None else max(0.0, core0 - on_core0),
        other_on_client_core=None if core1 is None else max(0.0, core1 - on_core1),
    )


def wait_for_quiet(cores: Cores, ours: Sequence[int], limit_s: float) -> float | None:
    """Wait (up to `limit_s`) until processes other than `ours` use both cores less than
    NOISY_SHARE over half a second; returns their share (of one core) at the last look."""
    if cores.server is None or limit_s <= 0:
        return None

    def look() -> tuple[float, float, float, float]:
        mine = sum(process_tree_cpu_s(pid) or 0.0 for pid in ours)
        return (time.monotonic(), core_busy_s(cores.server) or 0.0,
                core_busy_s(cores.client) or 0.0, mine)  # fmt: skip

    deadline, told = time.monotonic() + limit_s, False
    while True:
        start = look()
        time.sleep(0.5)
        end = look()
        wall = end[0] - start[0]
        others = max(0.0, (end[1] - start[1]) + (end[2] - start[2]) - (end[3] - start[3])) / wall
        if others < NOISY_SHARE or time.monotonic() >= deadline:
            if told:
                print(f"  (others now use {fmt_share(others)} of a core)", file=sys.stderr)
            return others
        if not told:
            print(
                f"  other processes use {fmt_share(others)} of a core; waiting up to"
                f" {limit_s:.0f} s for the machine to quiet down",
                file=sys.stderr,
            )
            told = True


@dataclass(frozen=True, slots=True)
class Measurement:
    arm: str
    kind: str
    concurrency: int
    load: LoadResult
    cpu: Cpu
    others_before: float | None  # other processes' CPU just before the scenario (one core = 1)
    attempts: int = 1  # runs of this scenario (a disturbed one is rerun; the quietest is kept)


def loadgen_command(target: Target, scenario: Scenario, settings: Settings) -> list[str]:
    extra = ["--expect", scenario.expect, *(["--ttfb"] if scenario.stream else [])]
    return harness.loadgen_command(target.url, target.bodies[scenario.kind],
                                   scenario.concurrency, settings.warmup_s, settings.duration_s,
                                   target.headers, extra)  # fmt: skip


def run_scenario(
    target: Target,
    upstream: Server,
    scenario: Scenario,
    cores: Cores,
    settings: Settings,
    scratch: Path,
) -> Measurement:
    log = scratch / f"loadgen-{target.arm}-{scenario.kind}-{scenario.concurrency}.log"
    upstream_pid = None if target.server is upstream else upstream.process.pid
    ours = [target.server.process.pid] + ([] if upstream_pid is None else [upstream_pid])
    others_before = wait_for_quiet(cores, ours, settings.quiet_wait_s)
    load, start, end = harness.run_loadgen(
        loadgen_command(target, scenario, settings),
        cores.client,
        log,
        lambda: cpu_sample(target.server.process.pid, upstream_pid, cores),
    )
    cpu = cpu_over(start, end, load.client_cpu, upstream_pid is not None)
    return Measurement(target.arm, scenario.kind, scenario.concurrency, load, cpu, others_before)


# --- reporting ------------------------------------------------------------------------------------


@dataclass(slots=True)
class Report:
    settings: Settings
    cores: Cores
    busy_before: dict[str, float | None] = field(default_factory=dict)
    startup_s: dict[str, float] = field(default_factory=dict)
    measurements: list[Measurement] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # arm -> why
    traces: dict[str, str] = field(default_factory=dict)  # traced arm -> exported / dropped
    git: str | None = None  # at the start of the run
    source_before: str = ""  # gateway_source_digest() at the start ...
    source_after: str = ""  # ... and at the end: they differ if someone edited it meanwhile
    litellm_install: str | None = None

    def find(self, arm: str, kind: str, concurrency: int) -> Measurement | None:
        return next(
            (
                m
                for m in self.measurements
                if (m.arm, m.kind, m.concurrency) == (arm, kind, concurrency)
            ),
            None,
        )


@dataclass(frozen=True, slots=True)
class Added:
    """An arm's figures minus `direct`'s, same request kind, concurrency 1 (ms)."""

    p50_ms: float | None
    p99_ms: float | None
    ttfb_p50_ms: float | None


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def added(report: Report, m: Measurement) -> Added | None:
    if m.arm == "direct" or m.concurrency != 1:
        return None
    base = report.find("direct", m.kind, 1)
    if base is None:
        return None
    return Added(
        _minus(m.load.p50_ms, base.load.p50_ms),
        _minus(m.load.p99_ms, base.load.p99_ms),
        _minus(m.load.ttfb_p50_ms, base.load.ttfb_p50_ms),
    )


RESULT_COLUMNS = ("arm", "request", "c", "req/s", "p50 ms", "p99 ms", "added p50/p99 ms",
                  "TTFB ms", "TTFB added", "errors", "server CPU", "CPU µs/req", "core-1 CPU",
                  "other CPU c0/c1")  # fmt: skip


def result_row(report: Report, m: Measurement) -> list[str]:
    load, extra = m.load, added(report, m)
    added_text = (
        "-" if extra is None else f"{fmt_ms(extra.p50_ms, True)} / {fmt_ms(extra.p99_ms, True)}"
    )
    return [m.arm, m.kind, str(m.concurrency), f"{load.requests_per_s:,.0f}", fmt_ms(load.p50_ms),
            fmt_ms(load.p99_ms), added_text, fmt_ms(load.ttfb_p50_ms),
            "-" if extra is None or m.kind != "stream" else fmt_ms(extra.ttfb_p50_ms, True),
            str(load.errors), fmt_share(m.cpu.server), _cpu_per_request(m),
            fmt_share(m.cpu.client_core), _other(m.cpu)]  # fmt: skip


def _cpu_per_request(m: Measurement) -> str:
    """The server's CPU time per answered request: what an arm costs, less sensitive than
    req/s to other processes taking turns on the cores (they slow it, they do not bill it)."""
    if m.cpu.server is None or not m.load.requests_per_s:
        return "-"
    return f"{m.cpu.server / m.load.requests_per_s * 1e6:,.0f}"


def _other(cpu: Cpu) -> str:
    return f"{fmt_share(cpu.other_on_server_core)}/{fmt_share(cpu.other_on_client_core)}"


def results_table(report: Report) -> str:
    order = {name: i for i, name in enumerate(ARM_NAMES)}
    kinds = {"chat": 0, "stream": 1}
    ordered = sorted(
        report.measurements,
        key=lambda m: (m.concurrency != 1, kinds[m.kind], m.concurrency, order[m.arm]),
    )
    return table(RESULT_COLUMNS, [result_row(report, m) for m in ordered])


@dataclass(frozen=True, slots=True)
class TargetCheck:
    name: str
    goal: str
    values: dict[str, float | None]  # arm -> value
    met: bool | None  # by the gateway; None: not measured


def target_checks(report: Report) -> list[TargetCheck]:
    def value(arm: str, pick: str) -> float | None:
        if pick == "rps":
            m = report.find(arm, "chat", TARGET_RPS_CONCURRENCY)
            return None if m is None else m.load.requests_per_s
        m = report.find(arm, "stream" if pick == "ttfb" else "chat", 1)
        extra = None if m is None else added(report, m)
        if extra is None:
            return None
        return extra.ttfb_p50_ms if pick == "ttfb" else extra.p50_ms

    checks = []
    for name, goal, pick, limit, at_most in (
        ("added p50, chat c=1", f"≤ {TARGET_ADDED_P50_MS} ms", "p50", TARGET_ADDED_P50_MS, True),
        (f"req/s, chat c={TARGET_RPS_CONCURRENCY}", f"≥ {TARGET_RPS:,.0f}", "rps", TARGET_RPS,
         False),
        ("TTFB added, stream c=1", f"≤ {TARGET_TTFB_ADDED_MS} ms", "ttfb", TARGET_TTFB_ADDED_MS,
         True),
    ):  # fmt: skip
        values = {arm: value(arm, pick) for arm in ("gateway", "litellm")}
        got = values["gateway"]
        met = None if got is None else (got <= limit if at_most else got >= limit)
        checks.append(TargetCheck(name, goal, values, met))
    return checks


def targets_table(report: Report) -> str:
    def show(check: TargetCheck, arm: str) -> str:
        value = check.values[arm]
        if value is None:
            return "-"
        return f"{value:,.0f}" if "req/s" in check.name else fmt_ms(value, signed=True)

    rows = [
        [c.name, c.goal, show(c, "gateway"), {True: "yes", False: "NO", None: "-"}[c.met],
         show(c, "litellm")]
        for c in target_checks(report)
    ]  # fmt: skip
    return table(("target (gateway)", "goal", "gateway", "met", "litellm"), rows)


def startup_table(report: Report) -> str:
    return table(
        ("server", "startup s"), [[name, f"{s:.2f}"] for name, s in report.startup_s.items()]
    )


def notes(report: Report) -> list[str]:
    found = [f"{arm} skipped: {why}" for arm, why in report.skipped.items()]
    found += [f"{arm}: {counts}" for arm, counts in report.traces.items()]
    if report.source_after and report.source_after != report.source_before:
        found.append(
            "the gateway's source changed on disk during the run (someone edited gateway/):"
            " rows measured before and after the change are not comparable; rerun"
        )
    if report.litellm_install and "litellm" not in report.skipped:
        found.append(f"litellm installed by: {report.litellm_install}")
    for m in report.measurements:
        label = f"{m.arm} {m.kind} c={m.concurrency}"
        if m.load.first_error is not None:
            found.append(f"{label}: {m.load.errors} error(s); first: {m.load.first_error}")
        watched = [(1, m.cpu.other_on_client_core)]  # direct runs on core 1 alone
        if m.arm != "direct":
            watched.insert(0, (0, m.cpu.other_on_server_core))
        noisy = [
            f"{fmt_share(share)} of core {core}"
            for core, share in watched
            if share is not None and share > NOISY_SHARE
        ]
        if noisy:
            runs = f" (the quietest of {m.attempts} runs)" if m.attempts > 1 else ""
            found.append(
                f"{label}: other processes used {' and '.join(noisy)} during the window{runs};"
                " this row is disturbed (look for busy processes, e.g. with `top`, and rerun)"
            )
        client_side = m.cpu.client + (m.cpu.upstream or 0.0)
        if m.arm != "direct" and m.concurrency > 1 and client_side > BUSY_CORE_SHARE:
            found.append(
                f"{label}: the load generator ({fmt_share(m.cpu.client)}) and the fake upstream"
                f" ({fmt_share(m.cpu.upstream)}) used {fmt_share(client_side)} of core 1: req/s"
                " may be limited by the client side, not by the server"
            )
    return found


def print_report(report: Report) -> None:
    print(results_table(report))
    print()
    print(targets_table(report))
    print()
    print(startup_table(report))
    print(f"\ngateway: git {report.git}, source digest {report.source_before}")
    print(
        "\n`added` = the arm's p50/p99 minus direct's at c=1 (same request kind); `TTFB` = time"
        " to the first body byte of the stream. `server CPU` = the server's share of core 0"
        " (the fake's, on core 1, for direct); `core-1 CPU` = core 1 busy (load generator + fake"
        " upstream); `other CPU` = what other processes used of core 0 / core 1 (noise). direct's"
        " req/s is bounded by core 1, which its load generator and the fake share."
    )
    for note in notes(report):
        print(f"\nnote: {note}")


def gateway_source_digest() -> str:
    """A digest of the gateway's source as it is on disk (committed or not)."""
    digest = hashlib.sha256()
    for path in sorted((REPO_DIR / "gateway").rglob("*.py")):
        digest.update(str(path.relative_to(REPO_DIR)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def _versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    found: dict[str, str | None] = {}
    for package in ("aiohttp", "uvicorn", "uvloop", "orjson"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = None
    return found


def write_json(report: Report, stamp: str) -> Path:
    results = []
    for m in report.measurements:
        extra = added(report, m)
        results.append({**asdict(m), "added": None if extra is None else asdict(extra)})
    document = {
        "timestamp": stamp,
        "settings": asdict(report.settings),
        "machine": {
            **harness.machine(),
            "packages": _versions(),
            "litellm": LITELLM_VERSION if "litellm" in report.settings.arms else None,
            "git": report.git,
            "gateway_source_digest": {"start": report.source_before, "end": report.source_after},
        },
        "cores": asdict(report.cores),
        "placement": {
            "server_core": report.cores.server,
            "fake_upstream_and_loadgen_core": report.cores.client,
        },
        "request": {"prompt": PROMPT, "max_tokens": 16, "endpoint": ENDPOINT},
        "busy_before_run": report.busy_before,
        "startup_s": report.startup_s,
        "skipped": report.skipped,
        "traces": report.traces,
        "litellm_install": report.litellm_install,
        "targets": [asdict(check) for check in target_checks(report)],
        "results": results,
    }
    return harness.write_results("llm", stamp, document)


# --- main -----------------------------------------------------------------------------------------


def _progress(report: Report, m: Measurement, prefix: str = "") -> None:
    line = harness.progress_line(RESULT_COLUMNS, result_row(report, m))
    print(f"  {prefix}{line}", file=sys.stderr)


def measure(target: Target, upstream: Server, cores: Cores, report: Report, scratch: Path) -> None:
    check_target(target)
    settings = report.settings
    for scenario in scenarios(settings):
        best: Measurement | None = None
        for attempt in range(1 + settings.retries):
            m = run_scenario(target, upstream, scenario, cores, settings, scratch)
            m = dataclasses.replace(m, attempts=attempt + 1)
            if best is None or noise(m) < noise(best):
                best = m
            if noise(m) <= NOISY_SHARE:
                break
            _progress(report, m, f"disturbed ({fmt_share(noise(m))} of a core to others), ")
        assert best is not None
        report.measurements.append(best)
        _progress(report, best)


def noise(m: Measurement) -> float:
    """The most CPU that other processes took of a core the arm runs on, over the window."""
    shares = [m.cpu.other_on_client_core]
    if m.arm != "direct":  # direct runs on core 1 alone
        shares.append(m.cpu.other_on_server_core)
    return max((share for share in shares if share is not None), default=0.0)


def bodies_for(model: str, scratch: Path, stream: bool) -> dict[str, Path]:
    bodies = {}
    for kind in ("chat", "stream") if stream else ("chat",):
        path = scratch / f"body-{model}-{kind}.json"
        path.write_bytes(chat_body(model, kind == "stream"))
        bodies[kind] = path
    return bodies


def benchmark(report: Report, cores: Cores, workspace: Workspace, scratch: Path) -> None:
    settings = report.settings
    litellm: LiteLLMInstall | None = None
    if "litellm" in settings.arms:  # before anything runs: the install is slow and CPU-heavy
        litellm = ensure_litellm(Path(settings.litellm_venv).resolve())
        report.litellm_install = litellm.how
        if litellm.executable is None:
            report.skipped["litellm"] = litellm.how
            print(f"litellm arm skipped: {litellm.how}", file=sys.stderr)
        else:
            print(f"litellm: {litellm.how}", file=sys.stderr)
    ours = dataclasses.replace(workspace, env=_python_env(workspace.env))
    with contextlib.ExitStack() as stack:
        upstream = stack.enter_context(
            running(upstream_arm(), ours, cores.client, settings.ready_timeout_s)
        )
        sink_url = ""
        if any(name in TRACE_SAMPLE_RATES for name in settings.arms):
            sink = stack.enter_context(
                running(trace_sink_arm(), ours, cores.client, settings.ready_timeout_s)
            )
            sink_url = sink.url
        report.startup_s["fake-upstream"] = upstream.startup_s
        print(
            f"fake-upstream: ready in {upstream.startup_s:.2f} s ({upstream.url})", file=sys.stderr
        )
        keyed = {"Authorization": f"Bearer {workspace.api_key}"}
        for name in settings.arms:
            if name in report.skipped:
                continue
            if name == "direct":
                target = Target(name, upstream, upstream.url + "/v1/chat/completions",
                                UPSTREAM_MODEL, {"Authorization": f"Bearer {UPSTREAM_KEY}"},
                                bodies_for(UPSTREAM_MODEL, scratch, settings.stream))  # fmt: skip
                print("direct: load straight at the fake upstream", file=sys.stderr)
                measure(target, upstream, cores, report, scratch)
                continue
            if name in GATEWAY_VARIANTS:
                arm, arm_workspace = gateway_arm(upstream.url, name, sink_url), ours
            else:
                assert litellm is not None and litellm.executable is not None
                arm = litellm_arm(upstream.url, litellm.executable)
                arm_workspace = dataclasses.replace(workspace, env=litellm_env(workspace.env))
            with running(arm, arm_workspace, cores.server, settings.ready_timeout_s) as server:
                report.startup_s[name] = server.startup_s
                print(f"{name}: ready in {server.startup_s:.2f} s", file=sys.stderr)
                target = Target(name, server, server.url + "/v1/chat/completions", ENDPOINT,
                                keyed, bodies_for(ENDPOINT, scratch, settings.stream))  # fmt: skip
                measure(target, upstream, cores, report, scratch)
                if name in TRACE_SAMPLE_RATES:
                    report.traces[name] = trace_counts(server.url)


def trace_counts(url: str) -> str:
    """How many traces the gateway sent and dropped (its /metrics), for the notes."""
    _, body = harness.http(url + "/metrics")
    counts: dict[str, float] = {}
    for line in body.decode().splitlines():
        if line.startswith(("gateway_traces_exported_total", "gateway_traces_dropped_total")):
            name, value = line.rsplit(" ", 1)
            counts[name] = counts.get(name, 0.0) + float(value)
    exported = counts.pop("gateway_traces_exported_total", 0.0)
    dropped = sum(counts.values())
    return f"traces exported {exported:,.0f}, dropped {dropped:,.0f}"


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_settings(argv)
    signal.signal(signal.SIGTERM, harness.exit_on_signal)
    cores = harness.choose_cores("servers and client")
    harness.pin_supervisor(cores)
    stamp = harness.utc_stamp()
    busy_before = harness.core_busy_shares(cores)
    report = Report(settings, cores, busy_before=busy_before, git=harness.git_revision())
    report.source_before = gateway_source_digest()
    harness.warn_if_busy(report.busy_before)
    scratch = Path(tempfile.mkdtemp(prefix="bench-llm-"))  # configs, bodies, logs
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "NO_PROXY": f"{HOST},localhost",
        "no_proxy": f"{HOST},localhost",
    }
    # The same key for the gateway (by its SHA-256) and the proxy (its master key, `sk-` first).
    workspace = Workspace(scratch, "sk-bench-" + secrets.token_urlsafe(24), env)

    def show_partial() -> None:
        if report.measurements:
            print_report(report)

    def source_after() -> None:
        report.source_after = gateway_source_digest()

    if not harness.supervise(
        lambda: benchmark(report, cores, workspace, scratch), scratch, show_partial, source_after
    ):
        return 1
    print_report(report)
    print(f"\nresults: {write_json(report, stamp)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(harness.run_main(main))
