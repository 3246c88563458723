"""An older snapshot never overwrites a newer one in Klaviyo: not when a zombie producer appends
it to the sync topic late, and not after the worker is killed and another takes over."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import timedelta
from decimal import Decimal
from typing import Any

import orjson
import pytest
from aiokafka.partitioner import murmur2

from streams.demo import demo_events
from streams.events import EventType, ReturnEvent
from streams.outbox import SyncRecord, encode_sync_record
from streams.projection import ProjectionConfig, profile_properties
from tests.agents.klaviyo.test_delivery_plan import sync_records
from tests.integration.conftest import PARTITIONS, WorkerFactory
from tests.integration.harness import SandboxThread, as_klaviyo_json, expected_klaviyo, wait_until
from tests.integration.test_delivery import converged, sandbox_for

SYNC_TOPIC = "returnsync-klaviyo-sync"  # after the test's prefix: "<prefix>returnsync-klaviyo-sync"
VERSIONS_TOPIC = f"{SYNC_TOPIC}-versions"


@pytest.fixture
def sandbox(request: pytest.FixtureRequest) -> Iterator[SandboxThread]:
    yield from sandbox_for(request)


def partition(key: str) -> int:
    return (murmur2(key.encode()) & 0x7FFFFFFF) % PARTITIONS


def oldest_differing(records: list[SyncRecord]) -> SyncRecord:
    """A customer's first snapshot that projects differently from their newest one."""
    config, newest = ProjectionConfig(), {}
    for record in records:
        newest[record.customer_key] = record
    for record in records:
        final = newest[record.customer_key]
        if record.state.version < final.state.version and as_klaviyo_json(
            profile_properties(record.state, config)
        ) != as_klaviyo_json(profile_properties(final.state, config)):
            return record
    raise AssertionError("no customer changed over the demo")


def marker(events: list[ReturnEvent], same_partition_as: str, avoid: str, tag: str) -> ReturnEvent:
    """A fresh change for another customer whose sync records share the stale one's partition:
    once it shows in Klaviyo, the stale record before it was consumed too."""
    for event in events:
        if event.customer_key != avoid and partition(event.customer_key) == partition(same_partition_as):
            return replace(event, event_id=f"marker:{tag}", type=EventType.STORE_CREDIT_ISSUED, items=(),
                           return_id=None, amount=Decimal("3.25"),
                           occurred_at=event.occurred_at + timedelta(days=90))
    raise AssertionError("no customer on that partition")


def test_stale_snapshot_from_a_zombie_never_overwrites_even_after_a_restart(
    start_worker: WorkerFactory, publish: Callable[..., None], sandbox: SandboxThread
) -> None:
    events = demo_events(40, seed=35)
    stale = oldest_differing(sync_records(events))
    key = stale.customer_key
    worker = start_worker(index=0)
    publish(events)
    converged(expected_klaviyo(events), sandbox, within=90)

    first = marker(events, key, key, "1")
    publish(raw=[(key.encode(), encode_sync_record(stale))], topic=SYNC_TOPIC)
    publish([first])
    converged(expected_klaviyo([*events, first]), sandbox, within=60)

    worker.kill()  # no goodbye: the next worker knows the floors only from Kafka
    second = replace(first, event_id="marker:2", occurred_at=first.occurred_at + timedelta(days=1))
    publish(raw=[(key.encode(), encode_sync_record(stale))], topic=SYNC_TOPIC)
    publish([second])
    start_worker(index=1)
    converged(expected_klaviyo([*events, first, second]), sandbox, within=90)


def floor_record(customer_key: str, version: int) -> tuple[bytes, bytes]:
    return customer_key.encode(), orjson.dumps({"v": version, "job": None})


def test_a_new_worker_writes_nothing_before_its_version_floors_are_loaded(
    start_worker: WorkerFactory, publish: Callable[..., None], sandbox: SandboxThread,
    bootstrap_servers: str, prefix: str,
) -> None:
    """aiokafka fetches newly assigned partitions before `on_partitions_assigned` returns, so
    the sync consumer holds records while the floors still load. A long versions topic (floors
    are never compacted on Tansu) makes that window seconds wide: a stale snapshot fetched in
    it must still be held to the floor a previous owner wrote."""
    records = sync_records(demo_events(40, seed=35))
    stale = oldest_differing(records)
    newest = {record.customer_key: record for record in records}
    fresh = next(record for key, record in newest.items()
                 if key != stale.customer_key and partition(key) == partition(stale.customer_key))
    filler = [floor_record(f"default/filler-{n}@returnsync-demo.com", 1) for n in range(200_000)]
    publish(raw=[*filler, floor_record(stale.customer_key, newest[stale.customer_key].state.version)],
            topic=VERSIONS_TOPIC)
    publish(raw=[(record.customer_key.encode(), encode_sync_record(record)) for record in (stale, fresh)],
            topic=SYNC_TOPIC)

    start_worker()
    # The stale record's timeline events still go (facts, deduplicated by unique_id) and create
    # its profile; the stale state must not have been written onto it.
    emails = {record.customer_key.split("/", 1)[1] for record in (stale, fresh)}

    def delivered() -> dict[str, dict[str, Any]] | None:
        found = sandbox.profiles()
        return found if found.keys() >= emails else None

    profiles = wait_until(delivered, within=90, what="both records delivered")
    assert profiles[fresh.customer_key.split("/", 1)[1]]["properties"].get("returns_count")
    written = profiles[stale.customer_key.split("/", 1)[1]]["properties"]
    assert not [name for name in written if name.startswith("returns_")], written
