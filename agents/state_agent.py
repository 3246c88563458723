"""The state agent: returns.events -> reduce -> customer_returns table -> sync record.

Decode, check the key, call the pure reducer, hand off. Anything it cannot read goes to the
dead-letter topic with a reason; it never stops on bad input.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import orjson
from aiokafka.partitioner import murmur2

from agents import metrics
from agents.app import Runtime
from streams.codec import decode_event
from streams.deadletter import dead_letter
from streams.errors import Reason, RejectedInput, Stage
from streams.events import customer_ref, format_time
from streams.reducer import Applied, apply_event
from streams.state import CustomerState, state_from_dict, state_to_dict

log = logging.getLogger(__name__)


@lru_cache(maxsize=65_536)  # murmur2 is pure Python; a customer's events repeat its key
def expected_partition(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner (murmur2) puts this key in."""
    partition: int = (murmur2(key) & 0x7FFFFFFF) % partitions
    return partition


def load_state(value: bytes | None) -> CustomerState | None:
    return state_from_dict(orjson.loads(value)) if value is not None else None


def dump_state(state: CustomerState) -> bytes:
    return orjson.dumps(state_to_dict(state))


class DecodedStates:
    """Decoded states of recently seen customers, so a hot customer is not re-parsed per event.

    The table stays the only truth: an entry is used only while the table still holds exactly
    the bytes it was decoded from (an identity check with the memory store, a memcmp with
    RocksDB), so recovery, rebalances and other writers can never serve a stale state.
    """

    def __init__(self, capacity: int = 50_000) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[bytes, tuple[bytes, CustomerState]] = OrderedDict()

    def get(self, key: bytes, stored: bytes | None) -> CustomerState | None:
        if stored is None:
            return None
        entry = self._entries.get(key)
        if entry is not None and (entry[0] is stored or entry[0] == stored):
            self._entries.move_to_end(key)
            return entry[1]
        return self.put(key, stored, state_from_dict(orjson.loads(stored)))

    def put(self, key: bytes, stored: bytes, state: CustomerState) -> CustomerState:
        self._entries[key] = (stored, state)
        self._entries.move_to_end(key)
        if len(self._entries) > self.capacity:
            self._entries.popitem(last=False)
        return state


def sync_record_bytes(state: bytes, event: bytes, applied: Applied, ingested_at: datetime) -> bytes:
    """The outbox record (streams.outbox format) spliced from bytes already encoded.

    Both parts are valid JSON objects here (the state was just dumped; the event just parsed),
    so splicing skips encoding the state a second time on the hottest path.
    """
    tail = orjson.dumps({"applied": applied.value, "ingested_at": format_time(ingested_at)})
    return b'{"state":' + state + b',"event":' + event + b"," + tail[1:]


def register(runtime: Runtime) -> None:
    app, table, settings = runtime.app, runtime.table, runtime.settings
    states = DecodedStates()
    ingested = metrics.LabelledCounters(metrics.EVENTS_INGESTED)
    processed = metrics.LabelledCounters(metrics.EVENTS_PROCESSED)
    partitions = settings.partitions
    sync_topic = runtime.sync_topic_name
    producer: Any = None  # Faust's producer, once the agent has started it

    async def dead(stage: Stage, reason: Reason, error: str, message: Any) -> None:
        metrics.DEADLETTERS.labels(stage.value, reason.value).inc()
        origin = {"topic": message.topic, "partition": message.partition, "offset": message.offset,
                  "key": message.key.decode("utf-8", "replace") if message.key else None}
        record = dead_letter(stage=stage, reason=reason, error=error, original=message.value,
                             at=datetime.now(UTC), origin=origin)
        await runtime.deadletter.send(key=message.key, value=record)

    async def process(message: Any) -> None:
        try:
            event = decode_event(message.value)
        except RejectedInput as exc:
            log.info("event rejected reason=%s offset=%s", exc.reason.value, message.offset)
            await dead(Stage.STATE, exc.reason, exc.detail, message)
            return
        key = event.customer_key.encode()
        # Never trust the producer's key: one customer's state must live in one partition.
        partition = message.partition
        if message.key != key or partition != expected_partition(key, partitions):
            metrics.EVENTS_REKEYED.inc()
            await runtime.rekey.send(key=key, value=message.value)
            return
        ingested.inc(event.source, event.type.value)
        stored = table.get(key)
        before = states.get(key, stored)
        result = apply_event(before, event)
        processed.inc(event.type.value, result.applied.value)
        if result.applied is Applied.DUPLICATE:
            state_bytes = stored if stored is not None else dump_state(result.state)
        else:
            state_bytes = dump_state(result.state)
            table[key] = state_bytes
            states.put(key, state_bytes, result.state)
            _count_active(before, result.state)
        # Re-sent for duplicates too: if a crash fell between the table write and this send, the
        # redelivered event is the only chance to deliver it; Klaviyo dedupes by unique_id.
        record = sync_record_bytes(state_bytes, message.value, result.applied, _ingested_at(message))
        # Straight to the producer (Topic.send's wrapping costs more than the write itself), to
        # the partition the default partitioner gives this key: it is the one just checked (the
        # sync topic has settings.partitions too). Awaited: the record is in the producer before
        # this event is acknowledged, and Faust flushes the producer before it commits offsets.
        await producer.send(sync_topic, key, record, partition, None, None)
        if log.isEnabledFor(logging.DEBUG):  # customer_ref hashes: only when it is logged
            log.debug("applied event=%s customer=%s result=%s", event.event_id,
                      customer_ref(event.customer_key), result.applied.value)

    @app.agent(runtime.events, name="state")
    async def state(stream: Any) -> None:
        # Does not yield: the agent has no sinks, and a yielding agent costs Faust a per-event
        # slurp step. The event is still acknowledged only when the loop asks for the next one.
        nonlocal producer
        producer = await app.maybe_start_producer()
        async for item in stream.events():
            try:
                await process(item.message)
            except Exception as exc:  # a bug must dead-letter one event, not stop the worker
                log.exception("state agent failed on offset=%s", item.message.offset)
                await dead(Stage.STATE, Reason.PROCESSING_ERROR, repr(exc), item.message)
            runtime.progress.record(item.message)

    @app.timer(interval=15.0)  # type: ignore[untyped-decorator]
    async def recount_active() -> None:
        # Recounted, not only incremented: this worker's partitions change on every rebalance.
        active = sum(1 for value in table.values() if _has_active(load_state(value)))
        metrics.CUSTOMERS_WITH_ACTIVE_RETURN.set(active)


def _ingested_at(message: Any) -> datetime:
    return datetime.fromtimestamp(message.timestamp, UTC) if message.timestamp else datetime.now(UTC)


def _has_active(state: CustomerState | None) -> bool:
    return state is not None and bool(state.active_returns)


def _count_active(before: CustomerState | None, after: CustomerState) -> None:
    delta = int(_has_active(after)) - int(_has_active(before))
    if delta:
        metrics.CUSTOMERS_WITH_ACTIVE_RETURN.inc(delta)
