"""`returnsync` command line: worker, dev, sandbox, publish, replay, reconcile, topics, deadletters."""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import logging
import logging.config
import os
import sys
from pathlib import Path

from agents.kafka import KafkaUnreachable, check_reachable
from agents.logs import logging_config
from agents.settings import Settings, SettingsError
from agents.topic_admin import TopicPlanError

DEFAULT_SANDBOX_KEY = "sandbox-key"


def _version() -> str:
    try:
        return importlib.metadata.version("returnsync")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that is not installed
        return "unknown (not installed)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="returnsync", description=__doc__)
    parser.add_argument("--version", action="version", version=f"returnsync {_version()}")
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

    topics = commands.add_parser("topics", help="print the topic plan; check or create it on the cluster")
    topics.add_argument("--check", action="store_true",
                        help="compare with the cluster; exit 1 on any mismatch")
    topics.add_argument("--create", action="store_true", help="create missing topics as planned, then check")
    topics.add_argument("--json", action="store_true", help="machine-readable output")

    from agents.commands import deadletters, reconcile, replay

    deadletters.add_arguments(commands.add_parser(
        "deadletters", help="list, show and re-drive returns.deadletter"))
    replay.add_arguments(commands.add_parser("replay", help="rebuild Klaviyo from returns.events"))
    reconcile.add_arguments(commands.add_parser("reconcile", help="compare a sample with Klaviyo"))

    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        return 2
    logging.config.dictConfig(logging_config(settings.log_format, settings.log_level))
    try:
        return _run(args, settings)
    except (KafkaUnreachable, TopicPlanError) as exc:
        print(f"returnsync {args.command}: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace, settings: Settings) -> int:
    if args.command == "worker":
        return _worker(settings)
    if args.command == "topics":
        from agents.commands.topics import run_topics

        return run_topics(settings, check=args.check, create=args.create, as_json=args.json)
    if args.command == "dev":
        from agents.devstack.stack import run_dev

        return run_dev(settings, customers=args.customers, exit_when_synced=args.exit_when_synced,
                       web_port=args.web_port, sandbox_port=args.sandbox_port)
    if args.command == "sandbox":
        from klaviyo_sandbox.server import serve

        key = settings.klaviyo_api_key or DEFAULT_SANDBOX_KEY
        serve(args.host, args.port, {key: "default"}, args.rate_limit_scale)
        return 0
    if args.command in ("publish", "replay", "reconcile", "deadletters"):
        if not settings.kafka_bootstrap_servers:
            print(f"KAFKA_BOOTSTRAP_SERVERS is required for {args.command}", file=sys.stderr)
            return 2
        # One clear line, before any work, when the cluster cannot be reached with these settings.
        asyncio.run(check_reachable(settings.kafka()))
    if args.command == "publish":
        from agents.commands.backfill import publish_file

        return asyncio.run(publish_file(settings, args.file, args.source, args.header))
    if args.command in ("replay", "reconcile", "deadletters"):
        from agents.commands import deadletters, reconcile, replay

        run = {"replay": replay.run_replay, "reconcile": reconcile.run_reconcile,
               "deadletters": deadletters.run}[args.command]
        return asyncio.run(run(settings, args))
    return 2  # pragma: no cover - argparse enforces the choices


def _worker(settings: Settings) -> int:
    missing = [name for name, value in (("KAFKA_BOOTSTRAP_SERVERS", settings.kafka_bootstrap_servers),
                                        ("KLAVIYO_API_KEY", settings.klaviyo_api_key)) if not value]
    if missing:
        print(f"returnsync worker needs {' and '.join(missing)}; `returnsync dev` runs the embedded "
              "broker and Klaviyo sandbox instead", file=sys.stderr)
        return 2
    from agents.worker.run import run_worker

    run_worker(settings, settings.kafka())
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
