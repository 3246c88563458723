"""`returnsync` command line: worker, dev, sandbox, publish, replay, reconcile."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path

from agents.settings import Settings, SettingsError

DEFAULT_SANDBOX_KEY = "sandbox-key"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="returnsync", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    commands.add_parser("worker", help="run a worker (configuration from the environment)")

    dev = commands.add_parser("dev", help="embedded broker + Klaviyo sandbox + worker + demo traffic")
    dev.add_argument("--customers", type=int, default=300, help="demo customers (default 300)")
    dev.add_argument("--exit-when-synced", action="store_true",
                     help="stop once every demo event reached the sandbox (for smoke tests)")
    dev.add_argument("--web-port", type=int, default=6066)
    dev.add_argument("--sandbox-port", type=int, default=8080)

    sandbox = commands.add_parser("sandbox", help="run the local Klaviyo sandbox")
    sandbox.add_argument("--host", default="127.0.0.1")
    sandbox.add_argument("--port", type=int, default=8080)
    sandbox.add_argument("--rate-limit-scale", type=float, default=1.0,
                         help="multiply Klaviyo's rate limits (0 disables them)")

    publish = commands.add_parser("publish", help="produce a JSONL file to returnsync's topics")
    publish.add_argument("file", type=Path)
    publish.add_argument("--source", default="canonical",
                         choices=("canonical", "loop", "redo", "swap", "shopify", "aftership"))
    publish.add_argument("--header", action="append", default=[], metavar="NAME:VALUE",
                         help="a header for every platform payload (X-Shopify-Topic, X-Returnsync-Tenant)")

    from agents import reconcile, replay

    replay.add_arguments(commands.add_parser("replay", help="rebuild Klaviyo from returns.events"))
    reconcile.add_arguments(commands.add_parser("reconcile", help="compare a sample with Klaviyo"))

    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s level=%(levelname)s logger=%(name)s %(message)s",
    )
    if args.command == "worker":
        return _worker(settings)
    if args.command == "dev":
        from agents.devstack import run_dev

        return run_dev(settings, customers=args.customers, exit_when_synced=args.exit_when_synced,
                       web_port=args.web_port, sandbox_port=args.sandbox_port)
    if args.command == "sandbox":
        from agents.sandbox.server import serve

        key = settings.klaviyo_api_key or DEFAULT_SANDBOX_KEY
        serve(args.host, args.port, {key: "default"}, args.rate_limit_scale)
        return 0
    if args.command == "publish":
        from agents.backfill import publish_file

        if not settings.kafka_bootstrap_servers:
            print("KAFKA_BOOTSTRAP_SERVERS is required for publish", file=sys.stderr)
            return 2
        return asyncio.run(publish_file(settings, args.file, args.source, args.header))
    if args.command in ("replay", "reconcile"):
        if not settings.kafka_bootstrap_servers:
            print(f"KAFKA_BOOTSTRAP_SERVERS is required for {args.command}", file=sys.stderr)
            return 2
        run = replay.run_replay if args.command == "replay" else reconcile.run_reconcile
        return asyncio.run(run(settings, args))
    return 2  # pragma: no cover - argparse enforces the choices


def _worker(settings: Settings) -> int:
    missing = [name for name, value in (("KAFKA_BOOTSTRAP_SERVERS", settings.kafka_bootstrap_servers),
                                        ("KLAVIYO_API_KEY", settings.klaviyo_api_key)) if not value]
    if missing:
        print(f"returnsync worker needs {' and '.join(missing)}; `returnsync dev` runs the embedded "
              "broker and Klaviyo sandbox instead", file=sys.stderr)
        return 2
    from agents.worker import run_worker

    assert settings.kafka_bootstrap_servers is not None
    run_worker(settings, settings.kafka_bootstrap_servers)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
