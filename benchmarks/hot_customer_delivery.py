"""Hot key: Klaviyo requests per 1,000 events for one customer with a long history (thousands of
events under one email, as POS orders sharing a placeholder email make) among ordinary customers,
against an ordinary-traffic burst, in one run, through broker + worker + sandbox.

    .venv/bin/python benchmarks/hot_customer_delivery.py [--hot-events 3970] [--ordinary 100]
                                                         [--burst 2000] [--scale 1] [--batch-seconds 0.5]

One worker process consumes an embedded broker and delivers to the sandbox (Klaviyo's real rate
limits unless `--scale`), as `returnsync dev` runs it. Every traffic kind has a Klaviyo account
of its own (a tenant per kind, `KLAVIYO_API_KEY_<TENANT>`), so the sandbox's request log counts
each kind's requests apart while they share the worker, its batches and the topics:

- burst: `--burst` ordinary customers' lifecycles published at once (the baseline);
- hot + ordinary: the hot customer's `--hot-events` events and `--ordinary` other customers'
  lifecycles, interleaved in time order and published at once; the hot customer is tenant
  `hot`, the others tenant `mixed`. Delivery keeps up with the fold here, which folds a hot
  customer's events slowly (its state is large): a stream of small batches;
- hot backlog: another hot customer (tenant `backlog`) whose events pile up while Klaviyo
  answers 503 for it until the worker has folded them all, then go: large batches. Requests
  answered 503 are left out of its count.

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
from collections import Counter
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

KEYS = {"key-default": "default", "key-burst": "burst", "key-hot": "hot", "key-mixed": "mixed",
        "key-backlog": "backlog"}
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


def folded(port: int) -> float:
    """Events through the worker's reducer so far."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("returnsync_events_processed_total{"))


def endpoint(record: dict[str, Any]) -> str:
    """`GET profile-bulk-import-jobs/{id}`: the path under /api/, job ids folded."""
    parts = record["path"].removeprefix("/api/").rstrip("/").split("/")
    if len(parts) > 1:
        parts[1] = "{id}"
    return f"{record['method']} {'/'.join(parts)}"


def row(name: str, events: int, log: list[dict[str, Any]]) -> str:
    """One table row from an account's request log, requests answered by an injected fault left out."""
    log = [r for r in log if r["fault"] is None]
    by_endpoint = Counter(endpoint(r) for r in log)
    statuses = Counter(str(r["status"]) for r in log)
    return (f"| {name} | {events:,} | {len(log):,} | {1000 * len(log) / events:,.1f} | "
            f"{', '.join(f'{route} {n:,}' for route, n in sorted(by_endpoint.items()))} | "
            f"{', '.join(f'{status}={n:,}' for status, n in sorted(statuses.items()))} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hot-events", type=int, default=3970)
    parser.add_argument("--ordinary", type=int, default=100)
    parser.add_argument("--burst", type=int, default=2000)
    parser.add_argument("--scale", type=float, default=1.0, help="the sandbox's rate_limit_scale")
    parser.add_argument("--batch-size", type=int, default=Settings().sync_batch_size)
    parser.add_argument("--batch-seconds", type=float, default=Settings().sync_batch_seconds)
    args = parser.parse_args()

    burst = demo_events(args.burst, seed=12, tenant="burst")
    hot = hot_customer_events(args.hot_events)
    ordinary = demo_events(args.ordinary, seed=11, tenant="mixed")
    mixed = sorted([*hot, *ordinary], key=lambda e: (e.occurred_at, e.event_id))
    backlog = hot_customer_events(args.hot_events, tenant="backlog", email="pos@store.com", seed=6)
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
                       "RETURNSYNC_SYNC_BATCH_SECONDS": str(args.batch_seconds),
                       **{f"KLAVIYO_API_KEY_{account.upper()}": key for key, account in KEYS.items()
                          if account != "default"}},
            )
            with ChildProcess(["worker"], env, workdir / "worker.log") as worker:
                worker.wait_http(f"http://127.0.0.1:{port}/ready", within=120)
                published = 0
                for name, events, accounts in (
                    ("burst", burst, {"burst": burst}),
                    ("hot + ordinary", mixed, {"hot": hot, "mixed": ordinary}),
                    ("hot backlog", backlog, {"backlog": backlog}),
                ):
                    say(f"{name}: publishing {len(events):,} events ...")
                    outage = None
                    if name == "hot backlog":
                        outage = httpx.post(f"{sandbox.url}/_sandbox/faults", timeout=10,
                                            json={"status": 503, "email": "pos@store.com"}).json()["data"]
                    asyncio.run(publish_records(bootstrap, prefix + "returns.events", event_records(events)))
                    published += len(events)
                    if outage is not None:
                        while folded(port) < published:
                            time.sleep(1)
                        httpx.delete(f"{sandbox.url}/_sandbox/faults/{outage['id']}", timeout=10)
                    seconds = delivered(sandbox, {a: timeline_count(e) for a, e in accounts.items()},
                                        within=1800)
                    say(f"{name}: delivered in {seconds:.0f}s")
                    for account, part in accounts.items():
                        label = {"burst": f"ordinary burst, {args.burst:,} customers",
                                 "hot": "hot customer (one email), delivery keeping up",
                                 "mixed": f"{args.ordinary} ordinary customers beside it",
                                 "backlog": "hot customer (one email), as a backlog"}[account]
                        log = httpx.get(f"{sandbox.url}/_sandbox/requests", params={"account": account},
                                        timeout=120).json()["data"]
                        results.append(row(label, len(part), log))
    finally:
        sandbox.stop()

    print(f"\nHot key delivery: one worker, {PARTITIONS} partitions, sync batch size {args.batch_size} "
          f"and window {args.batch_seconds:g}s, "
          f"sandbox rate_limit_scale={args.scale}, {os.cpu_count()} CPUs")
    print("| traffic | canonical events | Klaviyo requests | per 1,000 events | by endpoint | statuses |")
    print("|---|---|---|---|---|---|")
    for line in results:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
