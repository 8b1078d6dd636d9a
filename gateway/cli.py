"""The `gateway` command: serve a config, check one, reload a running gateway, read usage,
make keys. `gateway COMMAND --help` documents each command's options."""

from __future__ import annotations

import argparse
import logging
import logging.config
import os
import sys
from typing import Any

import orjson

from gateway.auth.keys import key_digest, new_key
from gateway.config.loading import load_config_file
from gateway.config.schema import GatewayConfig
from gateway.errors import ConfigError
from gateway.limits import RuleBook


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gateway", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve a config")
    serve.add_argument("--config", required=True)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--workers", type=int, default=1)
    serve.add_argument("--log-level", default="info")

    check = commands.add_parser("check", help="validate a config and load its models")
    check.add_argument("--config", required=True)

    usage = commands.add_parser("usage", help="usage from the ledger, as a table or CSV")
    usage.add_argument("--config", required=True)
    usage.add_argument("--since", help="epoch seconds or ISO date/date-time (UTC)")
    usage.add_argument("--until")
    usage.add_argument("--group-by", default="principal,endpoint,day")
    usage.add_argument("--format", default="table", choices=("table", "csv", "json"))

    reload = commands.add_parser(
        "reload", help="validate a config and apply it to a running gateway"
    )
    reload.add_argument("--config", required=True)
    reload.add_argument("--url", default="http://127.0.0.1:8080")
    reload.add_argument("--key", help="an admin key (default: $GATEWAY_ADMIN_KEY)")

    keys = commands.add_parser("keys", help="API keys")
    key_commands = keys.add_subparsers(dest="keys_command", required=True)
    new = key_commands.add_parser("new", help="print a fresh key and its config snippet")
    new.add_argument("--id", required=True)

    args = parser.parse_args(argv)
    # The gateway runs offline and keeps its traffic to itself: no MLflow usage telemetry.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    if args.command == "serve":
        return _serve(args)
    if args.command == "check":
        return _check(args.config)
    if args.command == "usage":
        return _usage(args)
    if args.command == "reload":
        return _reload(args)
    return _new_key(args.id)


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from gateway.app import CONFIG_ENV, GatewayApp
    from gateway.server.options import uvicorn_options

    log_config = _log_config(args.log_level.upper())
    logging.config.dictConfig(log_config)
    try:
        loaded = load_config_file(args.config)  # fail fast on a bad file, before binding
    except ConfigError as exc:
        _print_issues(exc)
        return 1
    if args.workers > 1 and (problem := _workers_problem(loaded.config)):
        print(f"cannot serve with --workers {args.workers}: {problem}", file=sys.stderr)
        return 1
    common = uvicorn_options(
        loaded.config.server, host=args.host, port=args.port, log_level=args.log_level
    )
    common["log_config"] = log_config  # uvicorn applies it in every worker process too
    if args.workers > 1:
        os.environ[CONFIG_ENV] = str(loaded.source)
        os.environ["GATEWAY_SUPERVISED"] = "1"
        uvicorn.run("gateway.app:create_app", factory=True, workers=args.workers, **common)
        return 0
    server: uvicorn.Server | None = None

    def stop() -> None:
        assert server is not None
        server.should_exit = True

    app = GatewayApp(loaded, on_fatal=stop)
    server = uvicorn.Server(uvicorn.Config(app, **common))
    server.run()
    return 1 if app.holder.failure is not None else 0


def _workers_problem(config: GatewayConfig) -> str | None:
    """Why a config cannot be served by several worker processes, or None.

    Each worker is a process of its own: with the memory store every worker would count limits
    and budgets on its own (N workers, N times the limit), and a reload would reach only the
    worker that received it. Redis shares both.
    """
    redis = config.limits.store.startswith(("redis://", "rediss://", "unix://"))
    if not redis and RuleBook(config).has_rules:
        return (
            "limits and budgets would be counted per worker (each would admit the whole limit)."
            " Set limits.store to a Redis URL (redis://host:6379/0), or serve one worker."
        )
    if not redis and config.reload.broadcast is None:
        return (
            "a reload would reach only the worker that received it. Set limits.store (or"
            " reload.broadcast) to a Redis URL, or serve one worker."
        )
    if config.reload.broadcast_secret is None:
        return (
            "a reload would reach only the worker that received it: reloads reach the other"
            " workers signed with reload.broadcast_secret. Set it (`reload: {broadcast_secret:"
            " ${GATEWAY_BROADCAST_SECRET}}`, 32 characters or more), or serve one worker."
        )
    return None


def _log_config(level: str) -> dict[str, Any]:
    """One format for the gateway's and uvicorn's lines, in the main and every worker process."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
        },
        "handlers": {
            "stderr": {"class": "logging.StreamHandler", "formatter": "plain"},
        },
        "root": {"level": level, "handlers": ["stderr"]},
        "loggers": {
            name: {"level": level, "handlers": [], "propagate": True}
            for name in ("uvicorn", "uvicorn.error", "uvicorn.access")
        },
    }


def _check(path: str) -> int:
    from gateway.models.served import CustomEndpoint
    from gateway.runtime import build_runtime

    try:
        loaded = load_config_file(path)
    except ConfigError as exc:
        _print_issues(exc)
        return 1
    try:
        runtime = build_runtime(loaded)
    except ConfigError as exc:  # never print a value read from the environment
        _print_issues(loaded.substitutions.scrub_error(exc))
        return 1
    for name, endpoint in runtime.endpoints.items():
        print(f"ok  {name}: {orjson.dumps(endpoint.describe()).decode()}")
        if isinstance(endpoint, CustomEndpoint):
            endpoint.discard()
    print(f"config {path} is valid (version {loaded.version})")
    return 0


def _usage(args: argparse.Namespace) -> int:
    import asyncio

    from gateway.errors import GatewayError
    from gateway.metering.query import UsageQuery, read_store
    from gateway.metering.report import to_csv, to_table
    from gateway.metering.stores import StoreError

    try:
        loaded = load_config_file(args.config)
        query = UsageQuery.parse(args.since, args.until, args.group_by, args.format)
    except ConfigError as exc:
        _print_issues(exc)
        return 1
    except GatewayError as exc:
        print(exc.message, file=sys.stderr)
        return 1

    async def read() -> list[dict[str, object]]:
        store = read_store(loaded.config.usage, loaded.base_dir)
        try:
            return await store.query(query.since, query.until, query.group_by)
        finally:
            await store.aclose()

    try:
        rows = asyncio.run(read())
    except StoreError as exc:
        print(f"cannot read the usage ledger: {exc}", file=sys.stderr)
        return 1
    if query.format == "csv":
        sys.stdout.write(to_csv(rows))
    elif query.format == "json":
        print(orjson.dumps(rows).decode())
    else:
        print(to_table(rows))
    return 0


def _reload(args: argparse.Namespace) -> int:
    """Validate locally first (a typo never reaches the server), then send the file's text."""
    import httpx

    try:
        loaded = load_config_file(args.config)
    except ConfigError as exc:
        _print_issues(exc)
        return 1
    key = args.key or os.environ.get("GATEWAY_ADMIN_KEY", "")
    try:
        response = httpx.post(
            f"{args.url.rstrip('/')}/admin/reload",
            content=loaded.text.encode(),
            headers={"authorization": f"Bearer {key}", "content-type": "application/yaml"},
            timeout=300,
        )
    except httpx.TransportError as exc:
        print(f"cannot reach {args.url}: {exc}", file=sys.stderr)
        return 1
    answer = response.json()
    if response.status_code != 200:
        print(f"reload refused ({response.status_code}): {answer.get('message')}", file=sys.stderr)
        for issue in answer.get("issues", []):
            print(f"  {issue}", file=sys.stderr)
        return 1
    print(f"applied config version {answer['version']}: {orjson.dumps(answer['changes']).decode()}")
    return 0


def _print_issues(error: ConfigError) -> None:
    print(f"invalid config ({len(error.issues)} problem(s)):", file=sys.stderr)
    for issue in error.issues:
        print(f"  {issue}", file=sys.stderr)


def _new_key(key_id: str) -> int:
    key = new_key()
    print(f"API key for {key_id!r} (shown once; store it in a secret manager):\n\n  {key}\n")
    print("Add to your config under auth.keys:\n")
    print(f'    - id: {key_id}\n      sha256: "{key_digest(key)}"\n')
    return 0


if __name__ == "__main__":
    sys.exit(main())
