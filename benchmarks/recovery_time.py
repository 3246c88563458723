"""Recovery time: how long a worker takes to answer /ready when it must restore customer state.

    .venv/bin/python benchmarks/recovery_time.py [--customers 1000000] [--store memory://]

Builds a `customer_returns` table of N customers by writing realistic state records (demo
customers folded with `apply_event`, encoded with `encode_state`, one per customer key) straight
to the table's changelog topic, then measures on the embedded broker:
1. cold: a fresh worker (no local state, no standby) from process start to /ready 200;
2. standby: two workers with `RETURNSYNC_STANDBY_REPLICAS=1`, both ready and the survivor's
   standbys caught up (it has gone quiet), the active one killed with SIGKILL, the time until the survivor
   answers /ready 200 again holding every partition (includes the session timeout, 10 s here,
   before the group notices the kill).
Delivery is off in every worker (RETURNSYNC_DELIVERY_ENABLED=0): only the state table matters.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid
from pathlib import Path
from tempfile import mkdtemp

import httpx

from agents.commands.publish import publish_records
from agents.devstack.broker import EmbeddedBroker, free_port
from agents.devstack.processes import ChildProcess, worker_env
from agents.kafka import KafkaConnection
from agents.settings import Settings
from agents.topic_admin import ensure_plan
from agents.topic_plan import STATE_TABLE, changelog_topic, topic_plan
from streams.codec import encode_state
from streams.demo import demo_customers
from streams.reducer import reduce_events

PARTITIONS = 4
TEMPLATES = 500
"""Distinct demo customers folded; the N records are these states under N customer keys."""
CHUNK = 50_000


def state_records(customers: int) -> list[tuple[bytes, bytes]]:
    """N (customer key, encoded state) pairs: real folded states, a new email in each copy."""
    templates = []
    for events in demo_customers(TEMPLATES, seed=11):
        state = reduce_events(events)
        assert state is not None
        templates.append((events[0].customer.email.encode(), encode_state(state)))
    records = []
    for index in range(customers):
        email, value = templates[index % TEMPLATES]
        new_email = f"recovery.{index}@returnsync-demo.com".encode()
        records.append((b"default/" + new_email, value.replace(email, new_email)))
    return records


def ready(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def owns_every_partition(port: int, topic: str) -> bool:
    """Whether the worker on `port` is ready and, by the group's assignment (Faust's /router/),
    the active owner of every partition of `topic` (the table's changelog)."""
    if not ready(port):
        return False
    try:
        routes = httpx.get(f"http://127.0.0.1:{port}/router/", timeout=2.0).json()
    except (httpx.HTTPError, ValueError):
        return False
    owners = [url for url, topics in routes.items() if topics.get(topic)]
    held = {partition for url in owners for partition in routes[url][topic]}
    return len(owners) == 1 and held == set(range(PARTITIONS))


def quiet(child: ChildProcess, seconds: float = 3.0, busy: float = 0.15) -> bool:
    """Whether `child` used under `busy` of a core over the next `seconds` (a worker with nothing
    to consume and delivery off only ticks its timers)."""
    def cpu() -> float:
        assert child.process is not None
        fields = Path(f"/proc/{child.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime
    before = cpu()
    time.sleep(seconds)
    return cpu() - before < busy * seconds


def wait_until(condition: object, within: float, what: str) -> float:
    started = time.monotonic()
    while time.monotonic() - started < within:
        if condition():  # type: ignore[operator]
            return time.monotonic() - started
        time.sleep(0.1)
    raise SystemExit(f"{what} not within {within:.0f}s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--store", default="memory://", choices=("memory://", "rocksdb://"))
    parser.add_argument("--phases", default="cold,standby", help="which measurements: cold, standby or both")
    options = parser.parse_args()
    logs = Path(mkdtemp(prefix="returnsync-recovery-"))
    broker = EmbeddedBroker(log_file=logs / "broker.log").start()
    bootstrap = broker.bootstrap_servers
    try:
        prefix = f"rec{uuid.uuid4().hex[:8]}."
        app_id = f"{prefix}returnsync"
        settings = Settings(app_id=app_id, topic_prefix=prefix, partitions=PARTITIONS)
        asyncio.run(ensure_plan(KafkaConnection(bootstrap), topic_plan(settings)))
        started = time.monotonic()
        records = state_records(options.customers)
        topic = changelog_topic(settings, STATE_TABLE)
        for first in range(0, len(records), CHUNK):
            asyncio.run(publish_records(bootstrap, topic, records[first:first + CHUNK]))
        size = sum(len(key) + len(value) for key, value in records)
        print(f"changelog {topic}: {len(records):,} customers, {size / 1e6:,.0f} MB of keys and "
              f"values, written in {time.monotonic() - started:.0f}s")
        del records

        def worker(name: str, standbys: int) -> tuple[ChildProcess, int]:
            port = free_port()
            env = worker_env(
                bootstrap_servers=bootstrap, klaviyo_url="http://127.0.0.1:9", klaviyo_key="unused",
                app_id=app_id, web_port=port, data_dir=logs / name, partitions=PARTITIONS,
                extra={"RETURNSYNC_TOPIC_PREFIX": prefix, "RETURNSYNC_DELIVERY_ENABLED": "0",
                       "RETURNSYNC_STORE": options.store, "RETURNSYNC_STANDBY_REPLICAS": str(standbys)},
            )
            return ChildProcess(["worker"], env, logs / f"{name}.log"), port

        phases = {phase.strip() for phase in options.phases.split(",")}
        if "cold" in phases:
            cold, port = worker("cold", 0)
            with cold:
                cold_seconds = wait_until(lambda: ready(port), 3600, "cold worker /ready")
            print(f"cold: fresh worker, no standby, /ready after {cold_seconds:.1f}s")
        if "standby" in phases:
            active, active_port = worker("active", 1)
            survivor, survivor_port = worker("survivor", 1)
            with active, survivor:
                wait_until(lambda: ready(active_port) and ready(survivor_port), 3600, "both workers /ready")
                # /ready does not wait for standbys: they read the other's partitions after it.
                # Warm means the survivor has gone quiet (nothing left to read, delivery is off).
                warm = wait_until(lambda: quiet(survivor), 3600, "the survivor's standbys caught up")
                print(f"standby: survivor's standbys caught up {warm:.0f}s after both were ready")
                active.kill()
                killed = time.monotonic()
                # Ready is not enough: until the group notices the kill, the survivor is ready with
                # its own partitions only. Done when the assignment gives it all of them and it is
                # ready again after restoring what it took over.
                wait_until(lambda: owns_every_partition(survivor_port, topic), 3600,
                           "the survivor ready and owning every partition")
                standby_seconds = time.monotonic() - killed
            print(f"standby: active killed, survivor /ready with every partition after "
                  f"{standby_seconds:.1f}s (session timeout 10s included)")
        print(f"\nmachine: {os.cpu_count()} cores; store {options.store}; {PARTITIONS} partitions; "
              f"logs in {logs}")
    finally:
        broker.stop()


if __name__ == "__main__":
    main()
