"""`python -m gateway.demo serve` (what `make serve` runs): the demo, two servers in one process.

1. trains the demo model once (`demo/models/iris`; later runs reuse it);
2. starts the stand-in for vLLM (`stand_in_llm`) on 127.0.0.1:8081, in a thread;
3. serves `config/demo.yaml` with the gateway on 127.0.0.1:8080, in the foreground.

Both are in this process, so Ctrl-C (or SIGTERM) stops both and nothing is left behind.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from types import FrameType

from gateway.demo import (
    DEMO_ADMIN_KEY,
    DEMO_CONFIG,
    DEMO_DIR,
    DEMO_KEY,
    GATEWAY_PORT,
    STAND_IN_PORT,
    STAND_IN_PORT_ENV,
    train_demo_model,
)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "serve":
            return serve(args.config, host=args.host, port=args.port, llm_port=args.llm_port)
        train()
        return 0
    except KeyboardInterrupt:
        return 130


def train() -> Path:
    started = time.monotonic()
    reused = (DEMO_DIR / "MLmodel").is_file()
    model = train_demo_model()
    how = "reused" if reused else f"trained in {time.monotonic() - started:.1f} s"
    _say(f"iris model at {model} ({how})")
    return model


def serve(config: Path, *, host: str, port: int, llm_port: int) -> int:
    """Run the stand-in and the gateway until the gateway stops; the gateway's exit status."""
    from gateway.cli import main as gateway_main  # here: `train` needs neither
    from gateway.demo.stand_in_llm import serving_in_thread

    train()
    signal.signal(signal.SIGTERM, _exit_on_sigterm)  # so SIGTERM, like Ctrl-C, unwinds
    os.environ[STAND_IN_PORT_ENV] = str(llm_port)  # config/demo.yaml points its LLMs there
    with ExitStack() as stack:
        try:
            stand_in = stack.enter_context(serving_in_thread("127.0.0.1", llm_port))
        except OSError as exc:
            _say(f"cannot start the stand-in for vLLM on 127.0.0.1:{llm_port}: {exc.strerror}")
            _say("stop what uses that port, or pass another with --llm-port")
            return 1
        stack.callback(_say, "stopped the stand-in for vLLM")
        _say(
            f"stand-in for vLLM on {stand_in} (not a model: canned, deterministic answers "
            "in the OpenAI wire format), behind endpoints llama-70b (chat) and e5 (embeddings)"
        )
        _say(f"gateway on http://{host}:{port}, serving {config}; Ctrl-C stops both")
        _say(f"keys (public, never reuse them): user {DEMO_KEY}, admin {DEMO_ADMIN_KEY}")
        return gateway_main(["serve", "--config", str(config), "--host", host, "--port", str(port)])


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def _say(line: str) -> None:
    print(f"demo: {line}", file=sys.stderr, flush=True)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m gateway.demo",
        description="The demo of `make serve`. Without a command: train the demo model only.",
    )
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("train", help="train the demo model (once; later runs reuse it)")
    serve = commands.add_parser(
        "serve", help="train the model, start the stand-in for vLLM, then serve the demo config"
    )
    serve.add_argument(
        "--config", type=Path, default=DEMO_CONFIG, help="the config to serve (config/demo.yaml)"
    )
    serve.add_argument("--host", default="127.0.0.1", help="the gateway's address (127.0.0.1)")
    serve.add_argument(
        "--port", type=int, default=GATEWAY_PORT, help=f"the gateway's port ({GATEWAY_PORT})"
    )
    serve.add_argument(
        "--llm-port",
        type=int,
        default=STAND_IN_PORT,
        help=f"the stand-in's port on 127.0.0.1 ({STAND_IN_PORT}); sets ${STAND_IN_PORT_ENV}",
    )
    return parser
