"""Replay rebuild: Klaviyo requests and time used by `returnsync replay`, against one request per
profile and per event, under the same (real) Klaviyo limits, in one run.

    .venv/bin/python benchmarks/replay_rebuild.py [--customers 2000] [--events N] [--rate-share 1.0]

Publishes demo lifecycles to an embedded broker, runs `returnsync replay --from-beginning` against
the sandbox enforcing Klaviyo's real rate limits, and counts what the sandbox stored and the
requests it logged (/_sandbox/counts). `--events` (default: 5 per customer, the issue's target
mix of 1,000,000 events for 200,000 customers) sets how many returns customers make: whole
lifecycles, refunds, exchanges and store credit included, with fewer serial returners than the
demo's default mix. Events are generated and published a chunk of customers at a time, so the
benchmark never holds the whole stream.

The baseline is not run (it would take hours at scale): its request count is exact (one
profile-import per customer, one create-event per Klaviyo event) and its time is the floor the
limits impose (both endpoints in parallel, each at its own burst and steady limits). The replay's
own floor is the same computation over the requests it made, at its rate share.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import httpx

from agents.commands.publish import _progress, event_records, publish_records
from agents.devstack.broker import EmbeddedBroker
from agents.kafka import KafkaConnection
from agents.settings import Settings
from agents.topic_admin import ensure_topics
from klaviyo_sandbox import SandboxServer
from klaviyo_sandbox.validation import catalog
from streams.demo import RETURNS_WEIGHTS, demo_customers
from streams.projection import ProjectionConfig, klaviyo_events

REPO = Path(__file__).resolve().parent.parent
TARGET_EVENTS, TARGET_CUSTOMERS = 1_000_000, 200_000
SANDBOX_KEY = "sandbox-key"
GIB = 1024**3


class Sandbox:
    """The sandbox on a thread of its own, enforcing Klaviyo's real limits."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server = SandboxServer(api_keys={SANDBOX_KEY: "default"}, rate_limit_scale=1.0)
        self.thread.start()
        self.url = asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(30)

    def counts(self) -> dict[str, Any]:
        data: dict[str, Any] = httpx.get(f"{self.url}/_sandbox/counts", timeout=120).json()["data"]
        return data

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@dataclass
class Published:
    canonical: int = 0
    klaviyo_events: int = 0
    seconds: float = 0.0


@dataclass
class Replayed:
    seconds: float
    max_rss_bytes: int


def returns_weights(customers: int, events: int, seed: int) -> tuple[float, ...]:
    """Weights for 1..4 returns per customer that make `events` events on average.

    Events per return are measured on a sample (whole lifecycles: 2 for a rejection, up to 7 for
    store credit later redeemed); the mix blends the demo's default with "one return each"
    (fewer events) or "four returns each" (more)."""
    sample = 20_000
    per_return = sum(len(c) for c in demo_customers(sample, seed=seed + 1, returns_weights=(1, 0, 0, 0)))
    per_return_mean = per_return / sample
    wanted = events / customers / per_return_mean  # returns per customer
    default_total = sum(RETURNS_WEIGHTS)
    default = [w / default_total for w in RETURNS_WEIGHTS]
    default_mean = sum((n + 1) * w for n, w in enumerate(default))
    if not 1 <= wanted <= 4:
        raise SystemExit(f"--events {events} for {customers} customers needs {wanted:.2f} returns each; "
                         f"the demo makes 1 to 4 ({per_return_mean:.2f} events per return)")
    if wanted <= default_mean:
        share, edge = (default_mean - wanted) / (default_mean - 1), (1.0, 0.0, 0.0, 0.0)
    else:
        share, edge = (wanted - default_mean) / (4 - default_mean), (0.0, 0.0, 0.0, 1.0)
    return tuple(share * e + (1 - share) * d for e, d in zip(edge, default, strict=True))


async def publish(bootstrap: str, topic: str, customers: int, weights: tuple[float, ...], *,
                  seed: int, chunk: int) -> Published:
    """Generate, encode and publish a chunk of customers at a time (each chunk in time order)."""
    config, result = ProjectionConfig(), Published()
    started = time.monotonic()
    lifecycles = demo_customers(customers, seed=seed, returns_weights=weights)
    done = 0
    while block := list(islice(lifecycles, chunk)):
        events = sorted((event for customer in block for event in customer),
                        key=lambda event: (event.occurred_at, event.event_id))
        result.canonical += len(events)
        result.klaviyo_events += sum(len(klaviyo_events(event, config)) for event in events)
        await publish_records(bootstrap, topic, event_records(events))
        done += len(block)
        _progress(done, customers, started)
    sys.stderr.write(f"  (published {result.canonical:,} events)\n")
    result.seconds = time.monotonic() - started
    return result


def replay(env: dict[str, str], args: argparse.Namespace) -> Replayed:
    """Run `returnsync replay` as a child; its peak RSS comes from wait4's resource usage."""
    started = time.monotonic()
    child = subprocess.Popen(
        [sys.executable, "-m", "agents.commands.cli", "replay", "--from-beginning",
         "--rate-share", str(args.rate_share), "--batch-size", str(args.batch_size)],
        env=env, cwd=REPO,
    )
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.monotonic() - started
    if child.returncode != 0:
        raise SystemExit(f"replay exited with {child.returncode} after {seconds:.0f}s")
    return Replayed(seconds, usage.ru_maxrss * 1024)


def floor_minutes(requests: int, burst: int, steady: int) -> float:
    """The least time `requests` take under Klaviyo's fixed windows (burst per 1 s, steady per
    60 s): full steady windows, then the last window's requests at the burst rate."""
    if requests <= 0:
        return 0.0
    windows, rest = divmod(requests - 1, steady)
    return (windows * 60 + rest // burst) / 60


def rss_now() -> int:
    """This process's resident set size now (Linux only; 0 elsewhere)."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def children_peak_rss() -> dict[str, int]:
    """Peak RSS (VmHWM) of this process's live children by name, e.g. the broker (Linux only)."""
    peaks: dict[str, int] = {}
    try:
        tasks = os.listdir("/proc/self/task")
        pids = {pid for task in tasks
                for pid in Path(f"/proc/self/task/{task}/children").read_text().split()}
        for pid in pids:
            status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                          if ":" in line)
            name = status["Name"].strip()
            peaks[name] = max(peaks.get(name, 0), int(status["VmHWM"].split()[0]) * 1024)
    except (OSError, KeyError, ValueError):
        pass
    return peaks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=2000)
    parser.add_argument("--events", type=int, default=None,
                        help="canonical events to aim for (default: 5 per customer, the issue's mix)")
    parser.add_argument("--rate-share", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=5000)
    parser.add_argument("--partitions", type=int, default=Settings().partitions)
    parser.add_argument("--chunk", type=int, default=10_000, help="customers generated and published at once")
    parser.add_argument("--seed", type=int, default=99)
    args = parser.parse_args()
    events = args.events or args.customers * TARGET_EVENTS // TARGET_CUSTOMERS
    weights = returns_weights(args.customers, events, args.seed)

    sandbox = Sandbox()
    prefix = f"bench{uuid.uuid4().hex[:8]}."
    topic = prefix + "returns.events"
    try:
        with EmbeddedBroker(log_file=Path(tempfile.mkdtemp()) / "broker.log") as broker:
            asyncio.run(ensure_topics(KafkaConnection(broker.bootstrap_servers), [topic], args.partitions))
            published = asyncio.run(publish(broker.bootstrap_servers, topic, args.customers, weights,
                                            seed=args.seed, chunk=args.chunk))
            env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
                   "KLAVIYO_BASE_URL": sandbox.url, "KLAVIYO_API_KEY": SANDBOX_KEY,
                   "RETURNSYNC_APP_ID": f"{prefix}returnsync", "RETURNSYNC_TOPIC_PREFIX": prefix,
                   "RETURNSYNC_PARTITIONS": str(args.partitions), "RETURNSYNC_LOG_LEVEL": "warning"}
            replayed = replay(env, args)
            children = children_peak_rss()
        counts = sandbox.counts()
    finally:
        sandbox.stop()
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, rss_now()
    report(args, weights, published, replayed, counts, own, children)


def report(args: argparse.Namespace, weights: tuple[float, ...], published: Published, replayed: Replayed,
           counts: dict[str, Any], own_rss: tuple[int, int], children: dict[str, int]) -> None:
    specs = {f"{spec.method} {spec.path}": spec for spec in catalog().values()}
    limits = {name: spec.steady_per_minute for name, spec in specs.items()}
    requests = counts["requests"]
    by_endpoint: dict[str, int] = requests["by_endpoint"]
    items: dict[str, int] = requests["items_by_endpoint"]
    customers, klaviyo = args.customers, published.klaviyo_events
    minutes = replayed.seconds / 60

    def floor(endpoint: str, n: int, share: float = 1.0) -> float:
        spec = specs[endpoint]
        return floor_minutes(n, math.floor(spec.burst_per_second * share) or 1,
                             math.floor(spec.steady_per_minute * share) or 1)

    profile_minutes = floor("POST /api/profile-import", customers)
    event_minutes = floor("POST /api/events", klaviyo)
    naive_requests, naive_minutes = customers + klaviyo, max(profile_minutes, event_minutes)
    replay_floor = max((floor(k, n, args.rate_share) for k, n in by_endpoint.items() if k in specs),
                       default=0.0)
    print(f"\nreplay rebuild: {published.canonical:,} canonical events ({klaviyo:,} Klaviyo events), "
          f"{customers:,} customers; sandbox holds {counts['events']:,} events, "
          f"{counts['profiles']:,} profiles")
    print(f"returns per customer weights (1..4): {', '.join(f'{w:.3f}' for w in weights)}; "
          f"published in {published.seconds:.0f} s (not counted)")
    print(f"rate share {args.rate_share}, batch size {args.batch_size}, {args.partitions} partitions, "
          f"real Klaviyo limits; statuses: "
          + ", ".join(f"{status}={n:,}" for status, n in requests["by_status"].items()))
    if counts["events"] != klaviyo or counts["profiles"] != customers:
        print("WARNING: the sandbox does not hold every event and profile")
    if requests["log_full"]:
        print("WARNING: the sandbox's request log overflowed; request counts are a lower bound")
    print(f"\n{'Klaviyo endpoint':<50}{'requests':>10}{'items':>12}{'limit/min':>11}")
    for endpoint, n in by_endpoint.items():
        print(f"{endpoint:<50}{n:>10,}{items.get(endpoint, 0):>12,}{limits.get(endpoint, 0):>11,}")
    print(f"\n{'what':<46}{'requests':>12}{'minutes':>10}{'events/s':>10}")
    print(f"{'replay, measured wall time (start, scan, send)':<46}{requests['total']:>12,}{minutes:>10.2f}"
          f"{published.canonical / replayed.seconds:>10,.0f}")
    print(f"{'  floor its requests need at the limits':<46}{'':>12}{replay_floor:>10.2f}")
    print(f"{'one request per profile/event, floor':<46}{naive_requests:>12,}{naive_minutes:>10.2f}"
          f"{published.canonical / (naive_minutes * 60):>10,.0f}")
    print(f"{'  profile-import, 1 per customer':<46}{customers:>12,}{profile_minutes:>10.2f}")
    print(f"{'  create-event, 1 per Klaviyo event':<46}{klaviyo:>12,}{event_minutes:>10.2f}")
    print(f"{'ratio one-per-profile/replay':<46}{naive_requests / requests['total']:>11,.0f}x"
          f"{naive_minutes / minutes:>9.1f}x")
    peaks = [f"replay process {replayed.max_rss_bytes / GIB:.2f}",
             f"benchmark process (generator + sandbox) {own_rss[0] / GIB:.2f} "
             f"({own_rss[1] / GIB:.2f} at the end, the sandbox full)"]
    peaks += [f"{name} {rss / GIB:.2f}" for name, rss in sorted(children.items())]
    print("\npeak RSS (GiB): " + ", ".join(peaks))
    cpu = platform.processor() or platform.machine()
    print(f"machine: {os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, "
          f"{platform.system()} {platform.release()}, broker embedded Tansu, sandbox in-process thread")


if __name__ == "__main__":
    main()
