"""State agent throughput (events/s, one process each) against three baselines, in one run.

    .venv/bin/pip install -e '.[bench]'   # Quix Streams, for the third row
    .venv/bin/python benchmarks/state_agent_throughput.py [--customers 4000]

The same demo events (`streams.demo`), as wire bytes, go through:
(a) the bare fold loop: decode the event, decode the stored state, `apply_event`, encode the
    state, in a dict, no Kafka: the ceiling any stream processor running this fold can reach;
(b) a naive Faust agent (benchmarks/naive_agent.py): parse JSON, one table write per event;
(c) Quix Streams running the fold (benchmarks/quix_agent.py): RocksDB state with a changelog,
    one output record per event;
(d) returnsync's state agent (validate, re-key check, reduce, table, outbox);
(e) the floor of any Faust agent (benchmarks/floor_agent.py): iterate the stream, no work.
(b) to (e) consume the same pre-published `returns.events` from the same embedded broker (or
KAFKA_BOOTSTRAP_SERVERS). Their throughput is read from Kafka itself: the create timestamps of
what each one writes per event (the naive agent's table changelog; Quix's output records;
returnsync's sync records, one per processed event; the floor agent's one record per 100
events), first to last. Polling the workers would
perturb them. returnsync runs with delivery off (RETURNSYNC_DELIVERY_ENABLED=0) so the state
agent is alone.
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
from streams.codec import decode_event, decode_state, encode_state
from streams.demo import demo_events
from streams.reducer import apply_event

PARTITIONS = 4
FLOOR_EVERY = 100
"""benchmarks/floor_agent.py's EVERY: it writes one record per this many events."""
ROWS = (
    ("bare", "(a) bare fold loop (decode, apply_event, encode; no Kafka)"),
    ("naive", "(b) naive Faust agent (json parse + 1 table write per event)"),
    ("quix", "(c) Quix Streams, same fold (RocksDB state, changelog, 1 out/event)"),
    ("returnsync", "(d) returnsync state agent (validate, reduce, table, outbox)"),
    ("floor", "(e) Faust's floor: iterate the stream, no work"),
)
REPO = Path(__file__).resolve().parent.parent


async def write_times(
    bootstrap: str, topic: str, expected: int, within: float, child: ChildProcess
) -> list[int]:
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
            if not child.running:
                raise SystemExit(f"{child.command[-1]} exited early:\n{child.log_tail()}")
            for batch in (await consumer.getmany(timeout_ms=1000, max_records=20000)).values():
                stamps.extend(record.timestamp for record in batch)
        if len(stamps) < expected:
            raise SystemExit(f"{topic}: only {len(stamps)} of {expected} records within {within:.0f}s")
        return sorted(stamps)
    finally:
        await consumer.stop()


def bare_fold_loop(records: list[tuple[bytes, bytes]]) -> float:
    """Events/s of the fold alone: what a stream processor adds is everything above this."""
    table: dict[bytes, bytes] = {}
    started = time.perf_counter()
    for key, value in records:
        table[key] = encode_state(apply_event(decode_state(table.get(key)), decode_event(value)).state)
    return len(records) / (time.perf_counter() - started)


def cpu_model() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    names = (line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    return next(names, platform.machine())


def quix_installed() -> bool:
    try:
        import quixstreams  # noqa: F401
    except ImportError:
        return False
    return True


def run(child: ChildProcess, bootstrap: str, topic: str, n: int, per_record: int = 1) -> float:
    """Events/s of `child`, which writes one record to `topic` per `per_record` of the n events."""
    # Created first: a consumer does not see topics created after it started.
    asyncio.run(ensure_topics(KafkaConnection(bootstrap), [topic], PARTITIONS))
    with child:
        stamps = asyncio.run(write_times(bootstrap, topic, n // per_record, within=900, child=child))
    events_timed = (len(stamps) - 1) * per_record if per_record > 1 else n
    return events_timed / max((stamps[-1] - stamps[0]) / 1000, 1e-3)


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
        records = event_records(events)
        asyncio.run(publish_records(bootstrap, prefix + "returns.events", records))
        results = {"bare": bare_fold_loop(records)}
        agents = ["naive", *(["quix"] if quix_installed() else []), "returnsync", "floor"]
        for name in agents:
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
            if name == "returnsync":
                topic = sync_topic(Settings.from_env(env))
                results[name] = run(ChildProcess(["worker"], env, log), bootstrap, topic, len(events))
            else:
                script = [sys.executable, str(REPO / "benchmarks" / f"{name}_agent.py")]
                child = ChildProcess([], env, log, command=script)
                output = f"{app_id}-naive-changelog" if name == "naive" else f"{app_id}-{name}-out"
                per_record = FLOOR_EVERY if name == "floor" else 1
                results[name] = run(child, bootstrap, output, len(events), per_record)
        print(
            f"\nmachine: {os.cpu_count()} cores, {cpu_model()}, load {os.getloadavg()[0]:.1f}, "
            f"Python {platform.python_version()}, broker {'external' if external else 'embedded Tansu'}"
        )
        print(f"input: {len(events)} events, {options.customers} customers, {PARTITIONS} partitions\n")
        print(f"{'what':<68}{'events/s':>10}{'vs bare':>9}")
        for name, line in ROWS:
            if name in results:
                print(f"{line:<68}{results[name]:>10,.0f}{results[name] / results['bare']:>8.2f}x")
            else:
                print(f"{line:<68}{'(skipped: pip install -e .[bench])':>19}")
    finally:
        if broker is not None:
            broker.stop()


if __name__ == "__main__":
    main()
