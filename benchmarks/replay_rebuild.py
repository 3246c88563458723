"""Replay rebuild: Klaviyo requests and time used by `returnsync replay`, against one request per
profile and per event, under the same (real) Klaviyo limits, in one run.

    .venv/bin/python benchmarks/replay_rebuild.py [--customers 2000] [--rate-share 1.0]

Publishes demo lifecycles to an embedded broker, runs `returnsync replay --from-beginning` against
the sandbox enforcing Klaviyo's real rate limits, and counts the requests from the sandbox's log.
The baseline is not run (it would take hours at scale): its request count is exact (one
profile-import per customer, one create-event per event) and its time is the floor the steady
limits impose (700 profile-imports/min, 3,500 events/min, in parallel). The last rows extrapolate
both to the issue's target, 1,000,000 events for 200,000 customers, per event and per customer.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from agents.broker import EmbeddedBroker
from agents.publish import event_records, publish_records
from agents.sandbox import SandboxServer
from streams.demo import demo_events
from streams.projection import ProjectionConfig, klaviyo_events

REPO = Path(__file__).resolve().parent.parent
TARGET_EVENTS, TARGET_CUSTOMERS = 1_000_000, 200_000
PROFILE_IMPORT_PER_MIN, EVENTS_PER_MIN = 700, 3500
SANDBOX_KEY = "sandbox-key"


class Sandbox:
    """The sandbox on a thread of its own, enforcing Klaviyo's real limits."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server = SandboxServer(api_keys={SANDBOX_KEY: "default"}, rate_limit_scale=1.0)
        self.thread.start()
        self.url = asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(30)

    def get(self, path: str) -> Any:
        return httpx.get(f"{self.url}/_sandbox/{path}", timeout=60).json()["data"]

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=2000)
    parser.add_argument("--rate-share", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=5000)
    args = parser.parse_args()

    events = demo_events(args.customers, seed=99)
    config = ProjectionConfig()
    klaviyo_event_count = sum(len(klaviyo_events(event, config)) for event in events)
    sandbox = Sandbox()
    prefix = f"bench{uuid.uuid4().hex[:8]}."
    try:
        with EmbeddedBroker(log_file=Path(tempfile.mkdtemp()) / "broker.log") as broker:
            asyncio.run(publish_records(broker.bootstrap_servers, prefix + "returns.events",
                                        event_records(events)))
            env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
                   "KLAVIYO_BASE_URL": sandbox.url, "KLAVIYO_API_KEY": SANDBOX_KEY,
                   "RETURNSYNC_APP_ID": f"{prefix}returnsync", "RETURNSYNC_TOPIC_PREFIX": prefix,
                   "RETURNSYNC_LOG_LEVEL": "warning"}
            started = time.monotonic()
            done = subprocess.run(
                [sys.executable, "-m", "agents.cli", "replay", "--from-beginning",
                 "--rate-share", str(args.rate_share), "--batch-size", str(args.batch_size)],
                env=env, cwd=REPO, check=False, capture_output=True, text=True,
            )
            seconds = time.monotonic() - started
            if done.returncode != 0:
                raise SystemExit(done.stderr[-3000:])
        log = sandbox.get("requests")
        stored = len(sandbox.get("events")), len(sandbox.get("profiles"))
    finally:
        sandbox.stop()
    report(args, len(events), klaviyo_event_count, log, stored, seconds)


def report(args: argparse.Namespace, canonical: int, klaviyo_event_count: int, log: list[dict[str, Any]],
           stored: tuple[int, int], seconds: float) -> None:
    by_endpoint = Counter(f"{r['method']} {r['path'].split('/api/')[-1].split('/')[0]}" for r in log)
    throttled = sum(1 for r in log if r["status"] == 429)
    customers = args.customers
    replay_requests = len(log)
    naive_requests = customers + klaviyo_event_count
    naive_minutes = max(customers / PROFILE_IMPORT_PER_MIN, klaviyo_event_count / EVENTS_PER_MIN)
    scale_events, scale_customers = TARGET_EVENTS / canonical, TARGET_CUSTOMERS / customers
    target_klaviyo_events = klaviyo_event_count * scale_events
    target_naive = TARGET_CUSTOMERS + target_klaviyo_events
    target_naive_minutes = max(TARGET_CUSTOMERS / PROFILE_IMPORT_PER_MIN,
                               target_klaviyo_events / EVENTS_PER_MIN)
    # Structure of a replay: bulk events of 1,000 (the bottleneck: 150 requests/min at the
    # share), one profile job per batch plus its polls (as measured per batch), a tail of singles.
    batches = -(-canonical // args.batch_size)
    per_batch = sum(v for k, v in by_endpoint.items() if "profile-bulk" in k) / batches
    target_batches = TARGET_EVENTS / args.batch_size
    target_replay = target_klaviyo_events / 1000 + target_batches * per_batch + 350 + 75
    target_replay_minutes = max(target_klaviyo_events / 1000 / (150 * args.rate_share),
                                target_batches * per_batch / (150 * args.rate_share))
    cpu = platform.processor() or platform.machine()
    print(f"\nreplay rebuild: {canonical} canonical events, {customers} customers, "
          f"{klaviyo_event_count} Klaviyo events; stored {stored[0]} events, {stored[1]} profiles")
    print(f"rate share {args.rate_share}, batch size {args.batch_size}, real Klaviyo limits, "
          f"429s: {throttled}")
    print("requests by endpoint: " + ", ".join(f"{k}={v}" for k, v in sorted(by_endpoint.items())))
    print(f"\n{'what':<44}{'requests':>12}{'minutes':>10}")
    print(f"{'replay (measured, wall incl. scan)':<44}{replay_requests:>12,}{seconds / 60:>10.2f}")
    print(f"{'one request per profile/event (floor)':<44}{naive_requests:>12,}{naive_minutes:>10.2f}")
    print(f"{'ratio naive/replay':<44}{naive_requests / replay_requests:>12.0f}x")
    print(f"\nextrapolated to {TARGET_EVENTS:,} events / {TARGET_CUSTOMERS:,} customers "
          f"(x{scale_events:.0f} events, x{scale_customers:.0f} customers):")
    print(f"{'replay (bulk events + profile jobs + tail)':<44}{target_replay:>12,.0f}"
          f"{target_replay_minutes:>10.1f}  (floor: 150 bulk requests/min x share)")
    print(f"{'one request per profile/event (floor)':<44}{target_naive:>12,.0f}{target_naive_minutes:>10.1f}")
    print(f"\nmachine: {os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, "
          f"{platform.system()} {platform.release()}, broker embedded Tansu, sandbox in-process thread")


if __name__ == "__main__":
    main()
