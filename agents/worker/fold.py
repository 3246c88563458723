"""The fold (Faust agent "state"): returns.events -> reduce -> customer_returns table -> sync record.

Decode, check the key, call the pure reducer, hand off. Anything it cannot read goes to the
dead-letter topic with a reason; it never stops on bad input.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, MutableMapping
from datetime import UTC, datetime, timedelta
from typing import Any

from agents import metrics
from agents.deadletters import DeadLetters
from agents.settings import DEFAULT_MAX_STATE_BYTES
from agents.worker.runtime import Runtime
from agents.worker.state_write import StateWrites
from streams.codec import decode_event
from streams.errors import Reason, RejectedInput, Stage
from streams.events import DEFAULT_MAX_FUTURE_SKEW, check_time, customer_ref
from streams.partitioning import expected_partition
from streams.reducer import Applied, apply_event
from streams.state import CustomerState, has_active_return, state_from_bytes

log = logging.getLogger(__name__)
RECOUNT_SECONDS = 30.0
RECOUNT_CHUNK = 2_000


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
        return self.put(key, stored, state_from_bytes(stored))

    def put(self, key: bytes, stored: bytes, state: CustomerState) -> CustomerState:
        self._entries[key] = (stored, state)
        self._entries.move_to_end(key)
        if len(self._entries) > self.capacity:
            self._entries.popitem(last=False)
        return state


class Fold:
    """One event into its customer's state: decode, check the key, reduce, store, hand on the sync
    record. Its inputs are explicit (a table, three async outputs) so tests drive it with a dict
    and lists; the Faust agent below is only the loop around it."""

    def __init__(self, table: MutableMapping[bytes, bytes], partitions: int, *,
                 sync: Callable[[bytes, bytes, int], Awaitable[Any]],
                 rekey: Callable[[bytes, bytes], Awaitable[Any]], dead_letters: DeadLetters,
                 max_future_skew: timedelta = DEFAULT_MAX_FUTURE_SKEW,
                 max_state_bytes: int = DEFAULT_MAX_STATE_BYTES, item_lines: bool = False) -> None:
        self.table, self.partitions, self.skew = table, partitions, max_future_skew
        self.sync, self.rekey, self.dead_letters = sync, rekey, dead_letters
        self.item_lines = item_lines  # kept only for custom-object records (apply_event)
        self.writes = StateWrites(table, sync, dead_letters, max_state_bytes)
        self.states = DecodedStates()
        self.ingested = metrics.LabelledCounters(metrics.EVENTS_INGESTED)
        self.processed = metrics.LabelledCounters(metrics.EVENTS_PROCESSED)

    async def process(self, message: Any) -> None:
        try:
            # Dated against the record's timestamp, never the clock: a replay decides the same.
            event = check_time(decode_event(message.value), now=_ingested_at(message),
                               max_future_skew=self.skew)
        except RejectedInput as exc:
            log.info("event rejected reason=%s offset=%s", exc.reason.value, message.offset)
            await self.dead_letters.message(Stage.STATE, exc.reason, exc.detail, message)
            return
        key = event.customer_key.encode()
        # Never trust the producer's key: one customer's state must live in one partition.
        partition = message.partition
        if message.key != key or partition != expected_partition(key, self.partitions):
            metrics.EVENTS_REKEYED.inc()
            await self.rekey(key, message.value)
            return
        self.ingested.inc(event.source, event.type.value)
        stored = self.table.get(key)
        before = self.states.get(key, stored)
        result = apply_event(before, event, item_lines=self.item_lines)
        self.processed.inc(event.type.value, result.applied.value)
        # The state and its sync record, written together or (dead-lettered) not at all.
        state_bytes = await self.writes.write(key, stored, result, message, _ingested_at(message))
        if state_bytes is None:
            return
        if result.applied is not Applied.DUPLICATE:
            self.states.put(key, state_bytes, result.state)
            _count_active(before, result.state)
        if log.isEnabledFor(logging.DEBUG):  # customer_ref hashes: only when it is logged
            log.debug("applied event=%s customer=%s result=%s", event.event_id,
                      customer_ref(event.customer_key), result.applied.value)


def register(runtime: Runtime) -> None:
    app, table = runtime.app, runtime.table
    producer: Any = None  # Faust's producer, once the agent has started it
    sync_topic = runtime.sync_topic_name

    async def sync(key: bytes, record: bytes, partition: int) -> None:
        # Straight to the producer (Topic.send's wrapping costs more than the write itself), to
        # the partition the default partitioner gives this key: the one Fold just checked (the
        # sync topic has settings.partitions too). Awaited: the record is in the producer before
        # this event is acknowledged, and Faust flushes the producer before it commits offsets.
        await producer.send(sync_topic, key, record, partition, None, None)

    async def rekey(key: bytes, value: bytes) -> None:
        await runtime.rekey.send(key=key, value=value)

    dead_letters = DeadLetters(lambda key, record: runtime.deadletter.send(key=key, value=record))
    fold = Fold(table, runtime.settings.partitions, sync=sync, rekey=rekey, dead_letters=dead_letters,
                max_future_skew=runtime.settings.max_future_skew,
                max_state_bytes=runtime.settings.max_state_bytes,
                item_lines=runtime.settings.custom_objects)

    @app.agent(runtime.events, name="state")
    async def state(stream: Any) -> None:
        # Does not yield: the agent has no sinks, and a yielding agent costs Faust a per-event
        # slurp step. The event is still acknowledged only when the loop asks for the next one.
        nonlocal producer
        producer = await app.maybe_start_producer()
        async for item in stream.events():
            try:
                await fold.process(item.message)
            except Exception as exc:  # a bug must dead-letter one event, not stop the worker
                message = item.message
                log.exception("state agent failed on offset=%s", message.offset, extra={
                    "topic": message.topic, "partition": message.partition, "offset": message.offset})
                await dead_letters.message(Stage.STATE, Reason.PROCESSING_ERROR, repr(exc), message)
            runtime.progress.record(item.message)

    on_disk = runtime.settings.store.startswith("rocksdb")

    @app.timer(interval=RECOUNT_SECONDS)  # type: ignore[untyped-decorator]
    async def recount_active() -> None:
        # Recounted, not only incremented: this worker's partitions change on every rebalance.
        # It must never hold the event loop: decoding every state took 20 s a pass at 1,000,000
        # customers, which stalled heartbeats (rebalances) and recovery. So a byte-level check,
        # and a yield every RECOUNT_CHUNK customers; the memory store's dict is copied first as
        # recovery and the agent write to it meanwhile (RocksDB iterates a snapshot).
        values = table.values() if on_disk else list(table.values())
        active = 0
        for index, value in enumerate(values, start=1):
            active += has_active_return(value)
            if index % RECOUNT_CHUNK == 0:
                await asyncio.sleep(0)
        metrics.CUSTOMERS_WITH_ACTIVE_RETURN.set(active)


def _ingested_at(message: Any) -> datetime:
    return datetime.fromtimestamp(message.timestamp, UTC) if message.timestamp else datetime.now(UTC)


def _has_active(state: CustomerState | None) -> bool:
    return state is not None and bool(state.active_returns)


def _count_active(before: CustomerState | None, after: CustomerState) -> None:
    delta = int(_has_active(after)) - int(_has_active(before))
    if delta:
        metrics.CUSTOMERS_WITH_ACTIVE_RETURN.inc(delta)
