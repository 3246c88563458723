"""The state agent: returns.events -> reduce -> customer_returns table -> sync record.

Decode, check the key, call the pure reducer, hand off. Anything it cannot read goes to the
dead-letter topic with a reason; it never stops on bad input.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import orjson
from aiokafka.partitioner import murmur2

from agents import metrics
from agents.app import Runtime
from streams.codec import decode_event
from streams.deadletter import dead_letter
from streams.errors import Reason, RejectedInput, Stage
from streams.events import ReturnEvent, customer_ref
from streams.outbox import SyncRecord, encode_sync_record
from streams.reducer import Applied, apply_event
from streams.state import CustomerState, state_from_dict, state_to_dict

log = logging.getLogger(__name__)


def expected_partition(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner (murmur2) puts this key in."""
    partition: int = (murmur2(key) & 0x7FFFFFFF) % partitions
    return partition


def load_state(value: bytes | None) -> CustomerState | None:
    return state_from_dict(orjson.loads(value)) if value is not None else None


def dump_state(state: CustomerState) -> bytes:
    return orjson.dumps(state_to_dict(state))


def register(runtime: Runtime) -> None:
    app, table, settings = runtime.app, runtime.table, runtime.settings

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
        if message.key != key or message.partition != expected_partition(key, settings.partitions):
            metrics.EVENTS_REKEYED.inc()
            await runtime.rekey.send(key=key, value=message.value)
            return
        metrics.EVENTS_INGESTED.labels(event.source, event.type.value).inc()
        before = load_state(table.get(key))
        result = apply_event(before, event)
        metrics.EVENTS_PROCESSED.labels(event.type.value, result.applied.value).inc()
        if result.applied is not Applied.DUPLICATE:
            table[key] = dump_state(result.state)
            _count_active(before, result.state)
        # Re-sent for duplicates too: if a crash fell between the table write and this send, the
        # redelivered event is the only chance to deliver it; Klaviyo dedupes by unique_id.
        await runtime.sync.send(key=key, value=encode_sync_record(_sync_record(event, result, message)))
        log.debug("applied event=%s customer=%s result=%s", event.event_id,
                  customer_ref(event.customer_key), result.applied.value)

    @app.agent(runtime.events, name="state")
    async def state(stream: Any) -> AsyncIterator[None]:
        async for item in stream.events():
            try:
                await process(item.message)
            except Exception as exc:  # a bug must dead-letter one event, not stop the worker
                log.exception("state agent failed on offset=%s", item.message.offset)
                await dead(Stage.STATE, Reason.PROCESSING_ERROR, repr(exc), item.message)
            runtime.progress.record(item.message)
            yield None

    @app.timer(interval=15.0)  # type: ignore[untyped-decorator]
    async def recount_active() -> None:
        # Recounted, not only incremented: this worker's partitions change on every rebalance.
        active = sum(1 for value in table.values() if _has_active(load_state(value)))
        metrics.CUSTOMERS_WITH_ACTIVE_RETURN.set(active)


def _sync_record(event: ReturnEvent, result: Any, message: Any) -> SyncRecord:
    ingested = datetime.fromtimestamp(message.timestamp, UTC) if message.timestamp else datetime.now(UTC)
    return SyncRecord(state=result.state, event=event, applied=result.applied, ingested_at=ingested)


def _has_active(state: CustomerState | None) -> bool:
    return state is not None and bool(state.active_returns)


def _count_active(before: CustomerState | None, after: CustomerState) -> None:
    delta = int(_has_active(after)) - int(_has_active(before))
    if delta:
        metrics.CUSTOMERS_WITH_ACTIVE_RETURN.inc(delta)
