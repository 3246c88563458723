"""Hot key: Klaviyo requests per 1,000 events for one customer with a long history (thousands of
events under one email, as POS orders sharing a placeholder email make) among ordinary customers,
against an ordinary-traffic burst, in one run, through broker + worker + sandbox.

    .venv/bin/python benchmarks/hot_customer_delivery.py [--hot-events 3970] [--ordinary 100]
                                                         [--burst 2000] [--scale 1]

One worker process consumes an embedded broker and delivers to the sandbox (Klaviyo's real rate
limits unless `--scale`), as `returnsync dev` runs it. Every traffic kind has a Klaviyo account
of its own (a tenant per kind, `KLAVIYO_API_KEY_<TENANT>`), so the sandbox's request log counts
each kind's requests apart while they share the worker, its batches and the topics:

- burst: `--burst` ordinary customers' lifecycles published at once (the baseline);
- hot + ordinary: the hot customer's `--hot-events` events and `--ordinary` other customers'
  lifecycles, interleaved in time order and published at once; the hot customer is tenant
  `hot`, the others tenant `mixed`.

A phase ends when its accounts hold every timeline event and their request logs stopped moving.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from agents.commands.publish import event_records, publish_records
from agents.devstack.broker import EmbeddedBroker, free_port
from agents.devstack.processes import ChildProcess, worker_env
from agents.kafka import KafkaConnection
from agents.settings import Settings
from agents.topic_admin import ensure_plan
from agents.topic_plan import topic_plan
from klaviyo_sandbox import SandboxServer
from streams.demo import demo_events
from streams.events import Customer, ReturnEvent
from streams.projection import ProjectionConfig, klaviyo_events
from streams.reducer import Applied, apply_event
from streams.state import CustomerState

KEYS = {"key-default": "default", "key-burst": "burst", "key-hot": "hot", "key-mixed": "mixed"}
PARTITIONS = 8


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def hot_customer_events(count: int, *, tenant: str = "hot", email: str = "noemail@store.com",
                        seed: int = 5) -> list[ReturnEvent]:
    """`count` events of many return lifecycles, all under one email, in time order."""
    customer = Customer(email=email)
    events: list[ReturnEvent] = []
    lifecycles = count // 5 + 10
    while len(events) < count:
        events = [dataclasses.replace(e, customer=customer, tenant=tenant, event_id=f"hot:{e.event_id}")
                  for e in demo_events(lifecycles, seed=seed)]
        lifecycles *= 2
    return events[:count]


def timeline_count(events: list[ReturnEvent]) -> int:
    """Timeline events Klaviyo ends up with, as the worker's reducer and projection make them."""
    config, states, total = ProjectionConfig(), dict[str, CustomerState](), 0
    for event in events:
        result = apply_event(states.get(event.customer_key), event)
        states[event.customer_key] = result.state
        if result.applied not in (Applied.DUPLICATE, Applied.REPEATED):
            total += len(klaviyo_events(event, config))
    return total


class Sandbox:
    def __init__(self, scale: float) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server = SandboxServer(api_keys=KEYS, rate_limit_scale=scale)
        self.thread.start()
        self.url = asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(30)

    def counts(self, account: str) -> dict[str, Any]:
        data: dict[str, Any] = httpx.get(f"{self.url}/_sandbox/counts", params={"account": account},
                                         timeout=120).json()["data"]
        return data

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def delivered(sandbox: Sandbox, wanted: dict[str, int], within: float) -> float:
    """Wait until each account holds its timeline events and its request log stood still 3 s."""
    started = time.monotonic()
    last: dict[str, int] = {}
    still_since = time.monotonic()
    while time.monotonic() - started < within:
        counts = {account: sandbox.counts(account) for account in wanted}
        totals = {account: c["requests"]["total"] for account, c in counts.items()}
        if totals != last:
            last, still_since = totals, time.monotonic()
        complete = all(counts[a]["events"] >= n for a, n in wanted.items())
        if complete and time.monotonic() - still_since >= 3.0:
            return still_since - started
        time.sleep(0.5)
    raise SystemExit(f"not delivered within {within:.0f}s: {last} requests, wanted events {wanted}")


def row(name: str, events: int, counts: dict[str, Any]) -> str:
    requests = counts["requests"]
    by_endpoint = ", ".join(f"{route.split(' ', 1)[1].removeprefix('/api/')} {n:,}"
                            for route, n in requests["by_endpoint"].items())
    statuses = ", ".join(f"{status}={n:,}" for status, n in requests["by_status"].items())
    return (f"| {name} | {events:,} | {requests['total']:,} | {1000 * requests['total'] / events:,.1f} | "
            f"{by_endpoint} | {statuses} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hot-events", type=int, default=3970)
    parser.add_argument("--ordinary", type=int, default=100)
    parser.add_argument("--burst", type=int, default=2000)
    parser.add_argument("--scale", type=float, default=1.0, help="the sandbox's rate_limit_scale")
    parser.add_argument("--batch-size", type=int, default=Settings().sync_batch_size)
    args = parser.parse_args()

    burst = demo_events(args.burst, seed=12, tenant="burst")
    hot = hot_customer_events(args.hot_events)
    ordinary = demo_events(args.ordinary, seed=11, tenant="mixed")
    mixed = sorted([*hot, *ordinary], key=lambda e: (e.occurred_at, e.event_id))
    prefix = f"hot{uuid.uuid4().hex[:8]}."
    settings = Settings(app_id=f"{prefix}returnsync", topic_prefix=prefix, partitions=PARTITIONS)
    sandbox = Sandbox(args.scale)
    workdir = Path(tempfile.mkdtemp(prefix="hot-bench-"))
    results: list[str] = []
    try:
        with EmbeddedBroker(log_file=workdir / "broker.log") as broker:
            bootstrap = broker.bootstrap_servers
            asyncio.run(ensure_plan(KafkaConnection(bootstrap), topic_plan(settings)))
            port = free_port()
            env = worker_env(
                bootstrap_servers=bootstrap, klaviyo_url=sandbox.url, klaviyo_key="key-default",
                app_id=settings.app_id, web_port=port, data_dir=workdir / "worker", partitions=PARTITIONS,
                extra={"RETURNSYNC_TOPIC_PREFIX": prefix, "RETURNSYNC_LOG_LEVEL": "warning",
                       "RETURNSYNC_SYNC_BATCH_SIZE": str(args.batch_size),
                       **{f"KLAVIYO_API_KEY_{account.upper()}": key for key, account in KEYS.items()
                          if account != "default"}},
            )
            with ChildProcess(["worker"], env, workdir / "worker.log") as worker:
                worker.wait_http(f"http://127.0.0.1:{port}/ready", within=120)
                for name, events, accounts in (
                    ("burst", burst, {"burst": burst}),
                    ("hot + ordinary", mixed, {"hot": hot, "mixed": ordinary}),
                ):
                    say(f"{name}: publishing {len(events):,} events ...")
                    asyncio.run(publish_records(bootstrap, prefix + "returns.events", event_records(events)))
                    seconds = delivered(sandbox, {a: timeline_count(e) for a, e in accounts.items()},
                                        within=1800)
                    say(f"{name}: delivered in {seconds:.0f}s")
                    for account, part in accounts.items():
                        label = {"burst": f"ordinary burst, {args.burst:,} customers",
                                 "hot": "hot customer (one email)",
                                 "mixed": f"{args.ordinary} ordinary customers beside it"}[account]
                        results.append(row(label, len(part), sandbox.counts(account)))
    finally:
        sandbox.stop()

    print(f"\nHot key delivery: one worker, {PARTITIONS} partitions, sync batch size {args.batch_size}, "
          f"sandbox rate_limit_scale={args.scale}, {os.cpu_count()} CPUs")
    print("| traffic | canonical events | Klaviyo requests | per 1,000 events | by endpoint | statuses |")
    print("|---|---|---|---|---|---|")
    for line in results:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
