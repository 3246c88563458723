"""Fleet budget: N workers on one Klaviyo account, against the account's limits, with each worker
planning for its share of the sync partitions, and (baseline, same run) each planning for all.

    .venv/bin/python benchmarks/fleet_budget.py [--workers 3] [--scale 0.5] [--customers 1500]
                                                [--batch-size 50] [--partitions 8]

An embedded broker; the sandbox as a process of its own, enforcing Klaviyo's limits times
`--scale` (`returnsync sandbox --rate-limit-scale`); `--workers` `returnsync worker` processes on
`--partitions` partitions, each with KLAVIYO_RATE_LIMIT_SCALE=`--scale` (the account's share
returnsync as a whole may use: here all of the sandbox's scaled limits). The default scale, 0.5,
is the lowest that gives every worker at least one token per window on every endpoint (3/8 of a
bulk endpoint's 5/s is 1.875; at 0.3 a 2/8 share would be 0.75 of a token a second, where the
per-window bound holds only on average, see agents/klaviyo/ratelimit.py).

Once every worker is ready and the sync group has settled, a burst of demo lifecycles is
published at once; the run ends when the sandbox holds every expected profile and timeline
event. `--batch-size` (RETURNSYNC_SYNC_BATCH_SIZE, default 50 instead of 500) makes each sync
batch a few Klaviyo requests per 50 records, so that the budget, not the two cores that run
everything here, bounds delivery.

Read from the sandbox's request log (/_sandbox/requests, when the sandbox received each request):
429s; per endpoint, accepted requests per second against the scaled limit and the busiest 1 s and
60 s intervals; "share of allowed throughput", the least time the scaled windows allow for the
requests an endpoint got over the time the run took (as benchmarks/klaviyo_delivery.py); and
the accepted requests per minute while 10% to 90% of the timeline events landed, which leaves out
the start-up and the tail (a worker's last requests may wait out the rest of a 60 s window, and
the last partitions to finish use only their owners' shares).

The baseline runs the same workers with the fleet share disabled: a wrapper replaces
`EndpointBudget.set_share` with a no-op, so every worker plans for the whole account, as before.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import math
import os
import platform
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from sandbox_process import SandboxProcess

from agents.commands.publish import event_records, publish_records
from agents.devstack.broker import EmbeddedBroker, free_port
from agents.devstack.processes import ChildProcess, worker_env
from klaviyo_sandbox.admin import route_of
from klaviyo_sandbox.ratelimit import Limit, RateLimiter
from klaviyo_sandbox.validation import catalog
from streams.demo import demo_events
from streams.events import ReturnEvent
from streams.projection import ProjectionConfig, klaviyo_events
from streams.reducer import Applied, apply_event
from streams.state import CustomerState

KEY = "fleet-bench-key"
CONFIG = ProjectionConfig()
# The old behaviour: a worker whose budgets ignore the share it is given.
BASELINE_WORKER = (
    "import sys\n"
    "from agents.klaviyo import ratelimit\n"
    "ratelimit.EndpointBudget.set_share = lambda self, share: None\n"
    "from agents.commands.cli import main\n"
    "sys.exit(main(['worker']))\n"
)


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class Run:
    label: str
    shares: list[float]
    converge_seconds: float
    log: list[dict[str, Any]]
    started: float  # epoch seconds, when the burst was published
    progress: list[tuple[float, int]]  # (epoch seconds, timeline events the sandbox holds), every second

    def reached(self, fraction: float, total: int) -> float:
        """Epoch seconds when the sandbox first held `fraction` of the expected timeline events."""
        return next(t for t, events in self.progress if events >= fraction * total)


def expected_counts(events: list[ReturnEvent]) -> tuple[int, int]:
    """(profiles, timeline events) Klaviyo holds once the events are delivered: the reducer's and
    projection's view, as the integration tests compute it."""
    states: dict[str, CustomerState] = {}
    timeline: set[tuple[str, str, str]] = set()
    for event in events:
        result = apply_event(states.get(event.customer_key), event)
        states[event.customer_key] = result.state
        if result.applied in (Applied.DUPLICATE, Applied.REPEATED):
            continue
        backfill = event.backfill or result.applied is Applied.OUT_OF_ORDER
        for item in klaviyo_events(event, CONFIG, backfill=backfill):
            timeline.add((item.email.lower(), item.metric, item.unique_id))
    return len({state.identity.email.lower() for state in states.values()}), len(timeline)


def share_of(url: str) -> float | None:
    try:
        text = httpx.get(f"{url}/metrics", timeout=5).text
    except httpx.HTTPError:
        return None
    for line in text.splitlines():
        if line.startswith("returnsync_klaviyo_budget_share "):
            return float(line.split()[1])
    return None


def run_fleet(
    label: str, name: str, args: argparse.Namespace, broker: EmbeddedBroker, sandbox: SandboxProcess,
    workdir: Path, events: list[ReturnEvent], expected: tuple[int, int], *, baseline: bool,
) -> Run:
    sandbox.admin("POST", "reset")
    prefix = f"fleet{uuid.uuid4().hex[:8]}."
    workers: list[tuple[ChildProcess, str]] = []
    try:
        for index in range(args.workers):
            port = free_port()
            env = worker_env(
                bootstrap_servers=broker.bootstrap_servers, klaviyo_url=sandbox.url, klaviyo_key=KEY,
                app_id=f"{prefix}returnsync", web_port=port, data_dir=workdir / name / f"worker-{index}",
                partitions=args.partitions,
                extra={"RETURNSYNC_TOPIC_PREFIX": prefix, "KLAVIYO_RATE_LIMIT_SCALE": str(args.scale),
                       "RETURNSYNC_SYNC_BATCH_SIZE": str(args.batch_size), "RETURNSYNC_LOG_LEVEL": "warning"},
            )
            command = [sys.executable, "-c", BASELINE_WORKER] if baseline else None
            worker = ChildProcess(["worker"], env, workdir / name / f"worker-{index}.log", command=command)
            workers.append((worker.start(), f"http://127.0.0.1:{port}"))
        for worker, url in workers:
            worker.wait_http(f"{url}/ready", within=180)
        shares = settled_shares(workers)
        say(f"  {label}: {args.workers} workers ready, sync partitions shared {shares}")

        started = time.time()
        topic = prefix + "returns.events"
        asyncio.run(publish_records(broker.bootstrap_servers, topic, event_records(events)))
        say(f"  {label}: burst of {len(events):,} events published in {time.time() - started:.1f}s")
        progress = wait_converged(sandbox, expected, workers, args.timeout, started)
        log = sandbox.admin("GET", "requests")
        return Run(label, shares, progress[-1][0] - started, log, started, progress)
    finally:
        for worker, _ in workers:
            worker.stop()


def settled_shares(workers: list[tuple[ChildProcess, str]], within: float = 120.0) -> list[float]:
    """Every worker holds sync partitions and the shares add up to 1, the same twice 2 s apart
    (a rebalance in between would show)."""
    deadline, previous = time.monotonic() + within, None
    while time.monotonic() < deadline:
        shares = [share_of(url) for _, url in workers]
        known = [share for share in shares if share is not None]
        settled = (len(known) == len(workers) and math.isclose(sum(known), 1.0)
                   and (len(workers) == 1 or max(known) < 1))
        if settled and known == previous:
            return known
        previous = known if settled else None
        time.sleep(2)
    raise TimeoutError(f"the sync group did not settle: shares {shares}")


def wait_converged(
    sandbox: SandboxProcess, expected: tuple[int, int], workers: list[tuple[ChildProcess, str]],
    timeout: float,
    started: float,
) -> list[tuple[float, int]]:
    """Poll the sandbox every second until it holds everything; the timeline counts seen."""
    profiles, events = expected
    progress: list[tuple[float, int]] = []
    deadline = time.time() + timeout
    last_report = 0.0
    while time.time() < deadline:
        counts = sandbox.admin("GET", "counts")
        progress.append((time.time(), counts["events"]))
        if counts["profiles"] >= profiles and counts["events"] >= events:
            return progress
        for worker, _ in workers:
            if not worker.running:
                raise RuntimeError(f"a worker exited:\n{worker.log_tail()}")
        if time.time() - last_report >= 15:
            last_report = time.time()
            say(f"    {time.time() - started:5.0f}s: {counts['profiles']:,}/{profiles:,} profiles, "
                f"{counts['events']:,}/{events:,} events, statuses {counts['requests']['by_status']}")
        time.sleep(1)
    raise TimeoutError(f"not converged within {timeout:.0f}s")


# --- measures ------------------------------------------------------------------------------------


def scaled_limits(scale: float) -> dict[str, Limit]:
    specs = catalog()
    published = {op: Limit(spec.burst_per_second, spec.steady_per_minute) for op, spec in specs.items()}
    limiter = RateLimiter(published, scale)
    found = {}
    for op, spec in specs.items():
        limit = limiter.scaled(op)
        if limit is not None:
            found[f"{spec.method} {spec.path}"] = limit
    return found


def received(record: dict[str, Any]) -> float:
    return datetime.fromisoformat(record.get("received_at") or record["at"]).timestamp()


def busiest(times: list[float], window: float) -> int:
    return max((bisect.bisect_left(times, t + window) - i for i, t in enumerate(times)), default=0)


def least_seconds(requests: int, limit: Limit) -> float:
    """The least time the scaled windows allow `requests` in: full 60 s windows, then the rest at
    the burst rate (benchmarks/klaviyo_delivery.py `limit_seconds`)."""
    if requests <= 0:
        return 0.0
    full = (requests - 1) // limit.steady_per_minute
    return full * 60 + (requests - full * limit.steady_per_minute) / limit.burst_per_second


@dataclass
class EndpointUse:
    route: str
    limit: Limit
    accepted: int
    throttled: int
    per_second: float
    busiest_second: int
    busiest_minute: int
    share_of_allowed: float
    steady_phase_per_minute: float  # accepted per minute while 10% to 90% of the events landed


def endpoint_use(run: Run, limits: dict[str, Limit], timeline: int) -> list[EndpointUse]:
    # Between 10% and 90% delivered: the burst's start-up and its tail (a worker's last
    # requests may wait out the rest of a 60 s window) left out.
    phase = run.reached(0.1, timeline), run.reached(0.9, timeline)
    accepted: dict[str, list[float]] = defaultdict(list)
    throttled: Counter[str] = Counter()
    for record in run.log:
        route = route_of(record["method"], record["path"])
        if record["status"] == 429:
            throttled[route] += 1
        else:
            accepted[route].append(received(record))
    uses = []
    for route in sorted(set(accepted) | set(throttled)):
        if route not in limits:
            continue
        times = sorted(accepted[route])
        limit = limits[route]
        uses.append(EndpointUse(
            route, limit, len(times), throttled[route], len(times) / run.converge_seconds,
            busiest(times, 1.0), busiest(times, 60.0),
            least_seconds(len(times), limit) / run.converge_seconds,
            60 * (bisect.bisect_left(times, phase[1]) - bisect.bisect_left(times, phase[0]))
            / max(1e-9, phase[1] - phase[0]),
        ))
    return uses


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{model}, {os.cpu_count()} CPUs, {memory:.0f} GiB, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}")


def report(args: argparse.Namespace, events: list[ReturnEvent], expected: tuple[int, int],
           runs: list[Run], limits: dict[str, Limit]) -> None:
    uses = {run.label: endpoint_use(run, limits, expected[1]) for run in runs}
    base, fleet = runs

    def throttled(run: Run) -> str:
        found = Counter(route_of(r["method"], r["path"]) for r in run.log if r["status"] == 429)
        detail = ", ".join(f"{n} on {route}" for route, n in found.most_common())
        return f"{sum(found.values()):,}" + (f" ({detail})" if detail else "")

    def binding(run: Run) -> str:
        top = max(uses[run.label], key=lambda use: use.share_of_allowed)
        return f"{top.share_of_allowed:.0%} of {top.route}"

    def steady_phase(run: Run) -> str:
        top = max(uses[run.label], key=lambda use: use.steady_phase_per_minute / use.limit.steady_per_minute)
        return (f"{top.steady_phase_per_minute:.0f}/min of {top.limit.steady_per_minute}/min "
                f"({top.steady_phase_per_minute / top.limit.steady_per_minute:.0%}, {top.route})")

    def reached(run: Run) -> str:
        return ", ".join(f"{run.reached(f, expected[1]) - run.started:.0f}" for f in (0.5, 0.9, 0.99))

    def over(run: Run) -> str:
        worst = max(uses[run.label], key=lambda use: use.busiest_minute / use.limit.steady_per_minute)
        return f"{worst.busiest_minute} of {worst.limit.steady_per_minute}/min ({worst.route})"

    print(f"\nFleet budget: {args.workers} workers, one Klaviyo account, sandbox limits x{args.scale} "
          f"(KLAVIYO_RATE_LIMIT_SCALE={args.scale}), {args.partitions} sync partitions, "
          f"sync batch size {args.batch_size}")
    print(f"burst: {args.customers:,} customers, {len(events):,} canonical events -> "
          f"{expected[0]:,} profiles, {expected[1]:,} timeline events")
    print(f"machine: {machine()}\n")
    print(f"| measure | {base.label} | {fleet.label} |")
    print("|---|---|---|")
    rows = [
        ("budget share per worker", ", ".join(f"{s:.3f}" for s in base.shares) + " (ignored)",
         ", ".join(f"{s:.3f}" for s in fleet.shares)),
        ("429 responses", throttled(base), throttled(fleet)),
        ("seconds to converge (burst published -> sandbox holds everything)",
         f"{base.converge_seconds:.0f}", f"{fleet.converge_seconds:.0f}"),
        ("seconds to 50%, 90%, 99% of the timeline events", reached(base), reached(fleet)),
        ("binding endpoint while 10-90% of the events landed: accepted/min against the limit",
         steady_phase(base), steady_phase(fleet)),
        ("share of allowed throughput over the whole run, binding endpoint", binding(base), binding(fleet)),
        ("most accepted requests in any 60 s interval, against the steady limit", over(base), over(fleet)),
        ("Klaviyo requests (all statuses)", f"{len(base.log):,}", f"{len(fleet.log):,}"),
    ]
    for row in rows:
        print("| " + " | ".join(row) + " |")
    for run in runs:
        print(f"\n{run.label}: per endpoint over the {run.converge_seconds:.0f}s run (accepted "
              "requests; limits are the sandbox's scaled ones; max 1s/60s: most in any interval that "
              "long, which fixed windows allow up to twice the limit)")
        print(f"{'endpoint':<52}{'limit':>10}{'accepted':>9}{'429':>6}{'req/s':>7}{'limit/s':>8}"
              f"{'max 1s':>7}{'max 60s':>8}{'allowed':>8}{'10-90%/min':>11}")
        for use in uses[run.label]:
            limit = f"{use.limit.burst_per_second}/{use.limit.steady_per_minute}"
            print(f"{use.route:<52}{limit:>10}{use.accepted:>9,}{use.throttled:>6}{use.per_second:>7.2f}"
                  f"{use.limit.steady_per_minute / 60:>8.2f}{use.busiest_second:>7}{use.busiest_minute:>8}"
                  f"{use.share_of_allowed:>8.0%}{use.steady_phase_per_minute:>11.0f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--scale", type=float, default=0.5, help="sandbox rate_limit_scale and workers' "
                        "KLAVIYO_RATE_LIMIT_SCALE")
    parser.add_argument("--customers", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=50, help="RETURNSYNC_SYNC_BATCH_SIZE")
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=1200.0, help="seconds to wait for each run")
    args = parser.parse_args()

    started = time.monotonic()
    events = demo_events(args.customers, seed=11)
    expected = expected_counts(events)
    limits = scaled_limits(args.scale)
    say(f"{len(events):,} events for {args.customers:,} customers: {expected[0]:,} profiles, "
        f"{expected[1]:,} timeline events expected")
    with tempfile.TemporaryDirectory(prefix="fleet-bench-") as tmp:
        workdir = Path(tmp)
        broker = EmbeddedBroker(log_file=workdir / "broker.log")
        with broker, SandboxProcess(workdir, KEY, args.scale) as sandbox:
            runs = []
            for label, name, baseline in (
                ("baseline: each worker plans for the whole account", "baseline", True),
                ("fleet budget: each plans for its partitions' share", "fleet", False),
            ):
                say(f"{label} ...")
                runs.append(run_fleet(label, name, args, broker, sandbox, workdir, events, expected,
                                      baseline=baseline))
    report(args, events, expected, runs, limits)
    print(f"\nbenchmark wall time {(time.monotonic() - started) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
