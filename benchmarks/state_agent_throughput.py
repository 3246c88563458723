"""State agent throughput (events/s, one worker) against a naive Faust agent, in one run.

    .venv/bin/python benchmarks/state_agent_throughput.py [--customers 4000]

Both consume the same pre-published `returns.events` (demo lifecycles) from the same embedded
broker (or KAFKA_BOOTSTRAP_SERVERS). Throughput is read from Kafka itself: the create
timestamps of what each one writes per event (the naive agent's table changelog; returnsync's
sync records, one per processed event), first to last. Polling the worker would perturb it.
returnsync runs with delivery off (RETURNSYNC_DELIVERY_ENABLED=0) so the state agent is alone.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import time
import uuid
from pathlib import Path
from tempfile import mkdtemp

from aiokafka import AIOKafkaConsumer, TopicPartition

from agents.commands.publish import event_records, publish_records
from agents.devstack.broker import EmbeddedBroker, free_port
from agents.devstack.processes import ChildProcess, worker_env
from agents.kafka import KafkaConnection
from agents.settings import Settings
from agents.topic_admin import ensure_plan, ensure_topics
from agents.topic_plan import sync_topic, topic_plan
from streams.demo import demo_events

PARTITIONS = 4
REPO = Path(__file__).resolve().parent.parent


async def write_times(bootstrap: str, topic: str, expected: int, within: float) -> list[int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        deadline = time.monotonic() + within
        while not consumer.partitions_for_topic(topic) and time.monotonic() < deadline:
            await consumer.topics()
            await asyncio.sleep(0.5)
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        stamps: list[int] = []
        while len(stamps) < expected and time.monotonic() < deadline:
            for batch in (await consumer.getmany(timeout_ms=1000, max_records=20000)).values():
                stamps.extend(record.timestamp for record in batch)
        if len(stamps) < expected:
            raise SystemExit(f"{topic}: only {len(stamps)} of {expected} records within {within:.0f}s")
        return sorted(stamps)
    finally:
        await consumer.stop()


def run(child: ChildProcess, bootstrap: str, topic: str, n: int) -> float:
    # Created first: a consumer does not see topics created after it started.
    asyncio.run(ensure_topics(KafkaConnection(bootstrap), [topic], PARTITIONS))
    with child:
        stamps = asyncio.run(write_times(bootstrap, topic, n, within=900))
    return n / max((stamps[-1] - stamps[0]) / 1000, 1e-3)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--customers", type=int, default=4000)
    options = parser.parse_args()
    events = demo_events(options.customers)
    logs = Path(mkdtemp(prefix="returnsync-bench-"))
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    broker = None if external else EmbeddedBroker(log_file=logs / "broker.log").start()
    bootstrap = external or broker.bootstrap_servers  # type: ignore[union-attr]
    try:
        prefix = f"bench{uuid.uuid4().hex[:8]}."
        # returns.events as the worker plans it (kept forever), before anything is published to it.
        plan = topic_plan(Settings(app_id=f"{prefix}returnsync", topic_prefix=prefix, partitions=PARTITIONS))
        asyncio.run(ensure_plan(KafkaConnection(bootstrap), plan))
        asyncio.run(publish_records(bootstrap, prefix + "returns.events", event_records(events)))
        results = {}
        for name in ("naive", "returnsync"):
            app_id = f"{prefix}{name}"
            env = worker_env(
                bootstrap_servers=bootstrap,
                klaviyo_url="http://127.0.0.1:9",
                klaviyo_key="unused",
                app_id=app_id,
                web_port=free_port(),
                data_dir=logs / name,
                partitions=PARTITIONS,
                extra={"RETURNSYNC_TOPIC_PREFIX": prefix, "RETURNSYNC_DELIVERY_ENABLED": "0"},
            )
            log = logs / f"{name}.log"
            if name == "naive":
                script = [sys.executable, str(REPO / "benchmarks" / "naive_agent.py")]
                child = ChildProcess([], env, log, command=script)
                results[name] = run(child, bootstrap, f"{app_id}-naive-changelog", len(events))
            else:
                topic = sync_topic(Settings.from_env(env))
                results[name] = run(ChildProcess(["worker"], env, log), bootstrap, topic, len(events))
        baseline = results["naive"]
        print(
            f"\nmachine: {os.cpu_count()} cores, {platform.processor() or platform.machine()}, "
            f"Python {platform.python_version()}, broker {'external' if external else 'embedded Tansu'}"
        )
        print(f"input: {len(events)} events, {options.customers} customers, {PARTITIONS} partitions\n")
        print(f"{'what':<58}{'events/s':>10}{'vs naive':>10}")
        print(
            f"{'naive Faust agent (json parse + 1 table write per event)':<58}{baseline:>10,.0f}{1.0:>9.2f}x"
        )
        line = "returnsync state agent (validate, re-key check, reduce, table, outbox)"
        print(f"{line[:58]:<58}{results['returnsync']:>10,.0f}{results['returnsync'] / baseline:>9.2f}x")
    finally:
        if broker is not None:
            broker.stop()


if __name__ == "__main__":
    main()
