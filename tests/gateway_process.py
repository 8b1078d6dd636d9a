"""Runs the real gateway (`python -m gateway serve`) as a subprocess on a free port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class GatewayProcess:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def wait_until_ready(
    url: str, process: subprocess.Popen[bytes], log_path: Path, timeout: float = 90
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gateway exited with {process.returncode}:\n{log_path.read_text()}")
        try:
            if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"gateway not ready after {timeout}s:\n{log_path.read_text()}")


@contextmanager
def run_gateway(
    config_path: Path,
    *,
    workdir: Path,
    extra_args: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    wait: bool = True,
    python: str = sys.executable,
    cwd: Path | None = None,
) -> Iterator[GatewayProcess]:
    """`python -m gateway serve` on a free port. `python` is another interpreter (a fresh venv's,
    tests/test_install.py); give it a `cwd` outside the repo, or `-m` imports the repo's copy."""
    port = free_port()
    log_path = workdir / f"gateway-{port}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [
                python,
                "-m",
                "gateway",
                "serve",
                "--config",
                str(config_path),
                "--port",
                str(port),
                *extra_args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            cwd=cwd,
        )
    gateway = GatewayProcess(f"http://127.0.0.1:{port}", process, log_path)
    try:
        if wait:
            wait_until_ready(gateway.url, process, log_path)
        yield gateway
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def write_config(directory: Path, text: str, name: str = "gateway.yaml") -> Path:
    path = directory / name
    path.write_text(text)
    return path
