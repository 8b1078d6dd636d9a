"""What one client may hold of the HTTP server: the head's size and header count, the time to
send it, and the number of connections (gateway/server/). Raw sockets against a real gateway."""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from tests.gateway_process import GatewayProcess, run_gateway, write_config

ADMIN_KEY = "gw-admin-test-key-0123456789abcdef"
MAX_HEADER_BYTES = 8192
MAX_HEADERS = 20
HEADER_TIMEOUT_S = 1.0
MAX_CONNECTIONS = 32
LIVE = b"GET /live HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    workdir = tmp_path_factory.mktemp("server-limits")
    config = write_config(
        workdir,
        f"""
server:
  max_header_bytes: {MAX_HEADER_BYTES}
  max_headers: {MAX_HEADERS}
  header_timeout_s: {HEADER_TIMEOUT_S}
  max_connections: {MAX_CONNECTIONS}
auth:
  keys:
    - {{id: admin, key: "${{ADMIN_KEY}}", roles: [user, admin]}}
""",
    )
    with run_gateway(config, workdir=workdir, env={"ADMIN_KEY": ADMIN_KEY}) as process:
        yield process


def address(gateway: GatewayProcess) -> tuple[str, int]:
    return "127.0.0.1", int(gateway.url.rsplit(":", 1)[1])


def connect(gateway: GatewayProcess, timeout: float = 5.0) -> socket.socket:
    return socket.create_connection(address(gateway), timeout=timeout)


def read_answer(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (a reset after an answer counts as a close)."""
    answer = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def exchange(gateway: GatewayProcess, request: bytes) -> tuple[bytes, float]:
    started = time.monotonic()
    with connect(gateway) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(request)
        answer = read_answer(sock)
    return answer, time.monotonic() - started


def status(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1.1 "), answer[:200]
    return int(answer[9:12])


def live_seconds(gateway: GatewayProcess) -> float:
    answer, elapsed = exchange(gateway, LIVE)
    assert status(answer) == 200, answer[:200]
    return elapsed


def test_a_head_within_the_limits_is_served(gateway: GatewayProcess) -> None:
    headers = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 100) for i in range(MAX_HEADERS - 2))
    answer, _ = exchange(
        gateway, b"GET /live HTTP/1.1\r\nHost: test\r\nConnection: close\r\n" + headers + b"\r\n"
    )
    assert status(answer) == 200


def test_an_oversize_header_gets_431(gateway: GatewayProcess) -> None:
    big = b"a" * (256 * 1024)
    answer, elapsed = exchange(gateway, b"GET /live HTTP/1.1\r\nHost: test\r\nX-Big: " + big)
    assert status(answer) == 431
    assert b"connection: close" in answer.lower()
    assert elapsed < 5


def test_too_many_headers_get_431(gateway: GatewayProcess) -> None:
    headers = b"".join(b"X-H%d: v\r\n" % i for i in range(MAX_HEADERS + 5))
    answer, _ = exchange(gateway, b"GET /live HTTP/1.1\r\nHost: test\r\n" + headers + b"\r\n")
    assert status(answer) == 431


def test_an_oversize_url_gets_414(gateway: GatewayProcess) -> None:
    answer, _ = exchange(gateway, b"GET /live?" + b"q" * (2 * MAX_HEADER_BYTES) + b" HTTP/1.1\r\n")
    assert status(answer) == 414


def test_a_64_mib_header_is_cut_short_and_live_stays_prompt(gateway: GatewayProcess) -> None:
    """Today's httptools protocol reads all of it, stalling the event loop for seconds."""
    sent = 0
    stopped_by_server = threading.Event()

    def stream() -> None:
        nonlocal sent
        chunk = b"a" * 65536
        deadline = time.monotonic() + 10
        with connect(gateway) as sock:
            try:
                sock.sendall(b"GET /live HTTP/1.1\r\nHost: test\r\nX-Huge: ")
                while sent < 64 * 1024 * 1024 and time.monotonic() < deadline:
                    sock.sendall(chunk)
                    sent += len(chunk)
            except OSError:  # the server answered 431 and closed
                stopped_by_server.set()

    streamer = threading.Thread(target=stream, daemon=True)
    streamer.start()
    latencies: list[float] = []
    while streamer.is_alive() and len(latencies) < 20:
        latencies.append(live_seconds(gateway))
    streamer.join(timeout=15)
    latencies.append(live_seconds(gateway))
    assert stopped_by_server.is_set(), f"the server read {sent} bytes of one header"
    assert sent < 8 * 1024 * 1024
    assert max(latencies) < 1.0, latencies


def test_a_slow_head_gets_408_and_is_closed(gateway: GatewayProcess) -> None:
    started = time.monotonic()
    with connect(gateway, timeout=HEADER_TIMEOUT_S + 5) as sock:
        sock.sendall(b"GET /live HTTP/1.1\r\nHost: test\r\n")
        answer = b""
        with contextlib.suppress(OSError):
            while time.monotonic() - started < HEADER_TIMEOUT_S + 4:
                sock.sendall(b"X")  # a header name that never ends
                sock.settimeout(0.2)
                with contextlib.suppress(TimeoutError):
                    chunk = sock.recv(65536)
                    if not chunk:
                        break
                    answer += chunk
    assert status(answer) == 408
    assert time.monotonic() - started < HEADER_TIMEOUT_S + 3


def test_a_silent_connection_is_closed(gateway: GatewayProcess) -> None:
    started = time.monotonic()
    with connect(gateway, timeout=HEADER_TIMEOUT_S + 5) as sock:
        assert read_answer(sock) == b""  # closed without a word, not left open
    assert time.monotonic() - started < HEADER_TIMEOUT_S + 3


def test_live_answers_while_slowloris_connections_fill_the_cap(gateway: GatewayProcess) -> None:
    """Connections still sending their head give way to new ones, so /live gets through."""
    held = []
    try:
        for _ in range(4 * MAX_CONNECTIONS):
            sock = connect(gateway)
            sock.sendall(b"GET /live HTTP/1.1\r\nHost: test\r\nX")
            held.append(sock)
        latencies = [live_seconds(gateway) for _ in range(10)]
        assert max(latencies) < 1.0, latencies
        time.sleep(HEADER_TIMEOUT_S + 1.5)
        for sock in held:  # every one was displaced (503) or timed out (408), and closed
            sock.settimeout(3)
            assert status(read_answer(sock)) in (408, 503)
    finally:
        for sock in held:
            sock.close()


def test_connections_beyond_the_cap_get_a_fast_503(gateway: GatewayProcess) -> None:
    """When every connection has a request in flight, a new one is refused without parsing."""
    busy = []
    try:
        for _ in range(MAX_CONNECTIONS):
            sock = connect(gateway)
            sock.sendall(  # a reload whose body never comes: in flight until we close
                b"POST /admin/reload HTTP/1.1\r\nHost: test\r\n"
                b"Authorization: Bearer " + ADMIN_KEY.encode() + b"\r\n"
                b"Content-Type: application/yaml\r\nContent-Length: 100\r\n\r\n"
            )
            busy.append(sock)
        time.sleep(0.5)  # let the server read every head
        answer, elapsed = exchange(gateway, LIVE)
        assert status(answer) == 503
        assert b"connection: close" in answer.lower()
        assert elapsed < 1.0
    finally:
        for sock in busy:
            sock.close()
    deadline = time.monotonic() + 5
    while True:  # the slots free up as the server sees the closes
        answer, _ = exchange(gateway, LIVE)
        if status(answer) == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert status(answer) == 200


def test_the_limits_are_config_fields() -> None:
    from gateway.config.loading import parse_config
    from gateway.errors import ConfigError

    loaded = parse_config("server: {max_header_bytes: 4096, max_connections: 10}\n")
    assert loaded.config.server.max_header_bytes == 4096
    assert loaded.config.server.header_timeout_s == 10.0
    with pytest.raises(ConfigError):
        parse_config("server: {max_header_bytes: 10}\n")


def test_a_body_sent_after_its_answer_is_not_taken_for_a_head(gateway: GatewayProcess) -> None:
    """The app may answer before reading a body; the rest of it then arrives between requests."""
    body = b"x" * (4 * MAX_HEADER_BYTES)
    with connect(gateway) as sock:
        sock.sendall(b"POST /live HTTP/1.1\r\nHost: test\r\nContent-Length: %d\r\n\r\n" % len(body))
        time.sleep(0.2)  # answered (405) before the body comes
        sock.sendall(body)
        time.sleep(0.2)
        sock.sendall(LIVE)
        answers = re.findall(rb"HTTP/1\.1 \d{3}", read_answer(sock))
    assert answers == [b"HTTP/1.1 405", b"HTTP/1.1 200"]
