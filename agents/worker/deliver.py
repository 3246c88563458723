"""The sync agent: sync records -> Klaviyo, on a consumer of its own.

It is deliberately not a Faust stream. Faust feeds every agent from one fetcher, so a sync agent
stuck behind a Klaviyo outage would fill its buffer and starve the state agent, and Faust's
shutdown would wait on it forever. A separate consumer group pauses only itself, commits only
after Klaviyo accepted a batch (at-least-once), and gives up its in-flight work on revocation.

Ordering per customer holds because one customer's records share a partition and batches are
sent one after another; where that is not enough (redelivery re-batched after a crash, zombie
producers, bulk jobs applied late) the version floors of agents/klaviyo/versions.py decide.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from agents.deadletters import DeadLetters
from agents.klaviyo.channels import Channels
from agents.klaviyo.delivery import Delivery
from agents.klaviyo.highwater import KafkaVersions
from agents.klaviyo.pipeline import Pipeline
from agents.offsets import partition_ends
from agents.topic_plan import versions_topic
from agents.worker.lag import INTERVAL_SECONDS, DeliveryLag, report_lag
from agents.worker.runtime import Runtime
from streams.errors import Reason, Stage
from streams.outbox import SyncRecord, decode_sync_record

log = logging.getLogger(__name__)
PIPELINE_DEPTH = 4
# A batch takes what the fetcher has, fetch after fetch, while records keep coming (each within
# FETCH_GAP_SECONDS of the last), for up to the batch window, the batch size or BATCH_BYTES.
# A quiet topic's record goes at once; a stream of them is one batch per window, so a customer
# with many changes in it costs one profile write and a bulk event request per window, not a
# request per change. The per-partition fetch is raised from Kafka's 1 MB: a customer with a long
# history carries a large state in each sync record, and two or three of them filled a fetch.
PARTITION_FETCH_BYTES = 4 * 1024 * 1024
BATCH_BYTES = 16 * 1024 * 1024
FETCH_GAP_SECONDS = 0.05


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    """Revoked: stop sending, let accepted bulk jobs finish (bounded), commit what settled.
    Assigned: load the partitions' version floors before anything is delivered.

    aiokafka hands the new partitions to the fetcher before it calls `on_partitions_assigned`,
    so getmany can return their records while the floors are still loading; `floors_loaded`
    holds delivery back until they are in (a fresh worker has none in memory, and a stale
    snapshot admitted then would overwrite a newer profile)."""

    def __init__(
        self, delivery: Delivery, pipeline: Pipeline, versions: KafkaVersions, fence_seconds: float,
        lag: DeliveryLag, runtime: Runtime,
    ) -> None:
        self.runtime = runtime
        self.delivery = delivery
        self.pipeline = pipeline
        self.versions = versions
        self.fence_seconds = fence_seconds
        self.lag = lag
        self.inflight: asyncio.Task[Any] | None = None
        self.generation = 0
        self.floors_loaded = asyncio.Event()

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        self.generation += 1
        self.floors_loaded.clear()
        self.runtime.sync_assigned = False
        task = self.inflight
        if task is not None and not task.done():
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                if _stopping():
                    raise
        deadline = time.monotonic() + self.fence_seconds
        await self.delivery.quiesce(self.fence_seconds)
        await self.pipeline.drain(max(0.0, deadline - time.monotonic()))
        revoked = list(revoked)
        self.versions.forget_partitions(tp.partition for tp in revoked)
        self.lag.forget((tp.topic, tp.partition) for tp in revoked)

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        assigned = list(assigned)
        # Klaviyo's limits are the fleet's: plan for our share of them (the full assignment here).
        self.delivery.channels.plan_fleet_share(len(assigned))
        self.lag.assigned(((tp.topic, tp.partition) for tp in assigned), time.time())
        for attempt in itertools.count(1):
            try:
                await self.versions.load(tp.partition for tp in assigned)
                break
            except Exception as exc:  # delivering without floors could write stale state: wait
                log.warning("version floors not loaded (attempt %d, retrying): %r", attempt, exc)
                await asyncio.sleep(min(30.0, 0.5 * 2**attempt))
        self.floors_loaded.set()
        self.runtime.sync_assigned = True


def register(runtime: Runtime) -> None:
    settings = runtime.settings
    dead_letters = DeadLetters(lambda key, record: runtime.deadletter.send(key=key, value=record))

    @runtime.app.task  # type: ignore[untyped-decorator]
    async def klaviyo_sync() -> None:
        channels = Channels.from_settings(settings)
        versions = KafkaVersions(runtime.kafka, versions_topic(settings), settings.partitions)
        await versions.start()
        delivery = Delivery(channels, settings.projection, dead_letters.send, versions,
                            settings.custom_objects_title if settings.custom_objects else None)
        consumer = AIOKafkaConsumer(
            runtime.sync_topic_name,
            **runtime.kafka.client_options(),
            group_id=f"{settings.app_id}-klaviyo-sync",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=int(settings.session_timeout * 1000),
            heartbeat_interval_ms=int(max(0.5, min(3.0, settings.session_timeout / 4)) * 1000),
            # A batch may wait out a long Klaviyo outage before it is acknowledged.
            max_poll_interval_ms=3_600_000,
            max_partition_fetch_bytes=PARTITION_FETCH_BYTES,
        )
        lag = DeliveryLag()
        pipeline = Pipeline(lambda offsets: _commit(consumer, offsets, lag), PIPELINE_DEPTH)
        # The group waits for a revoking member up to the session timeout: fence within half.
        listener = _Rebalance(delivery, pipeline, versions, settings.session_timeout / 2, lag, runtime)
        consumer.subscribe([runtime.sync_topic_name], listener=listener)
        await consumer.start()
        # On its own schedule: while a batch waits on Klaviyo the delivery loop is not running.
        measuring = asyncio.ensure_future(_measure_sync_lag(consumer, lag))
        try:
            while True:
                await _deliver_next_batch(consumer, delivery, listener, runtime, dead_letters)
        finally:
            runtime.sync_assigned = False
            measuring.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await measuring
            report_lag("sync", [])
            # Leaving the group does not call the listener (aiokafka), so a stop goes through
            # the revocation fence itself: bulk jobs Klaviyo accepted get their ids recorded as
            # floors and settled batches are committed. Cut short, the next owner wrote a
            # newer profile that the unrecorded job, applied later, overwrote with an older one.
            try:
                await listener.on_partitions_revoked(consumer.assignment())
            except Exception as exc:
                log.warning("sync stop: in-flight work not fenced (redelivered by the next owner): %r", exc)
            pipeline.cancel_all()
            with contextlib.suppress(Exception):
                await consumer.stop()
            await versions.stop()
            await channels.aclose()


async def _deliver_next_batch(
    consumer: AIOKafkaConsumer, delivery: Delivery, listener: _Rebalance, runtime: Runtime,
    dead_letters: DeadLetters,
) -> None:
    settings, pipeline = runtime.settings, listener.pipeline
    await pipeline.commit_settled()
    if pipeline.full:
        await pipeline.wait_head()
        return
    generation = listener.generation
    # With batches settling, come back soon to commit them rather than waiting out a quiet topic.
    wait = settings.sync_batch_seconds if not len(pipeline) else min(settings.sync_batch_seconds, 0.1)
    batches = await _fetch(consumer, settings.sync_batch_size, wait, settings.sync_batch_seconds)
    for tp, batch in batches.items():
        if batch:
            listener.lag.fetched((tp.topic, tp.partition), batch[0].offset, batch[0].timestamp,
                                 batch[-1].timestamp)
    messages = [message for partition in batches.values() for message in partition]
    if not messages:
        return
    records = await _decode(messages, dead_letters)
    await listener.floors_loaded.wait()
    if listener.generation != generation:
        # A rebalance ran meanwhile: these may be another worker's now, or ours again, fetched
        # from the new assignment. Either way they are not delivered here, so the consumer must
        # not move past them: dropped without a rewind, they were never delivered at all.
        await _rewind_to_committed(consumer, [tp for tp, batch in batches.items() if batch])
        return
    listener.inflight = asyncio.ensure_future(delivery.submit(records))
    try:
        settled = await listener.inflight
    except asyncio.CancelledError:
        # Revocation cancels only the batch; a stop cancels this task, and the batch with it.
        # Swallowing a stop kept the worker delivering (and committing past the given-up batch)
        # until it was killed: the stop must go on.
        if _stopping():
            raise
        log.info("sync batch cancelled by a rebalance; the new owner redelivers it")
        return
    finally:
        listener.inflight = None
    pipeline.add({tp: batch[-1].offset + 1 for tp, batch in batches.items() if batch}, settled)


async def _fetch(
    consumer: AIOKafkaConsumer, size: int, wait: float, window: float
) -> dict[TopicPartition, list[Any]]:
    """The first records within `wait`, then more while they keep coming, for up to `window`."""
    batches: dict[TopicPartition, list[Any]] = await consumer.getmany(
        timeout_ms=int(wait * 1000), max_records=size)
    closes = time.monotonic() + window
    count = sum(len(batch) for batch in batches.values())
    size_bytes = sum(len(message.value or b"") for batch in batches.values() for message in batch)
    while 0 < count < size and size_bytes < BATCH_BYTES:
        gap = min(FETCH_GAP_SECONDS, closes - time.monotonic())
        if gap <= 0:
            break
        more = await consumer.getmany(timeout_ms=max(1, int(gap * 1000)), max_records=size - count)
        if not more:
            break
        for tp, batch in more.items():
            batches.setdefault(tp, []).extend(batch)
            count += len(batch)
            size_bytes += sum(len(message.value or b"") for message in batch)
    return batches


async def _rewind_to_committed(consumer: AIOKafkaConsumer, partitions: list[TopicPartition]) -> None:
    """Fetch these partitions again from the group's committed offsets (those still assigned;
    the others start there for their next owner anyway)."""
    for tp in partitions:
        if tp not in consumer.assignment():
            continue
        try:
            committed = await consumer.committed(tp)
            if committed is None:  # nothing committed: the group starts from the beginning
                await consumer.seek_to_beginning(tp)
            else:
                consumer.seek(tp, committed)
        except (IllegalStateError, KafkaError) as exc:  # revoked again meanwhile: reset by that
            log.info("sync partition not rewound (%s): %r", tp, exc)


def _stopping() -> bool:
    """Whether the running task itself is being cancelled (a stop), not only what it awaited."""
    current = asyncio.current_task()
    return current is not None and current.cancelling() > 0


async def _commit(consumer: AIOKafkaConsumer, offsets: dict[TopicPartition, int], lag: DeliveryLag) -> None:
    try:
        await consumer.commit(offsets)
    except (CommitFailedError, KafkaError) as exc:
        # Lost the partitions meanwhile: the new owner redelivers; the version floors and
        # idempotent writes make that harmless.
        log.warning("sync commit failed (redelivery follows): %s", exc)
        return
    for tp, offset in offsets.items():
        lag.settled((tp.topic, tp.partition), offset)


async def _decode(messages: list[Any], dead_letters: DeadLetters) -> list[SyncRecord]:
    records = []
    for message in messages:
        try:
            records.append(decode_sync_record(message.value))
        except Exception as exc:  # written by us: a bad one is a bug, kept for replay
            log.exception("unreadable sync record offset=%s", message.offset)
            await dead_letters.message(Stage.SYNC, Reason.PROCESSING_ERROR, repr(exc), message)
    return records


async def _measure_sync_lag(consumer: AIOKafkaConsumer, lag: DeliveryLag) -> None:
    """Sync-topic lag every INTERVAL_SECONDS: committed (delivered) offset vs the broker's end."""
    failing = False
    while True:
        await asyncio.sleep(INTERVAL_SECONDS)
        try:
            await asyncio.wait_for(_report_sync_lag(consumer, lag), timeout=4 * INTERVAL_SECONDS)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the broker or coordinator is away: keep the last values
            if not failing:
                log.warning("sync lag not measured (retrying every %.0fs): %r", INTERVAL_SECONDS, exc)
            failing = True
        else:
            failing = False


async def _report_sync_lag(consumer: AIOKafkaConsumer, lag: DeliveryLag) -> None:
    assignment = list(consumer.assignment())
    keys = {(tp.topic, tp.partition): tp for tp in assignment}
    for key, generation in lag.unseeded(keys).items():
        tp = keys[key]
        committed = await consumer.committed(tp)
        if committed is None:  # nothing committed yet: the group starts from the beginning
            committed = (await consumer.beginning_offsets([tp]))[tp]
        lag.seed(key, committed, generation)
    listed = await consumer.end_offsets(assignment) if assignment else {}
    # Assigned at the start of this measurement and still assigned: a rebalance may have run,
    # and aiokafka asserts on the highwater of a partition it no longer holds.
    current = set(consumer.assignment()) & set(assignment)
    ends = partition_ends(listed, {tp: consumer.highwater(tp) for tp in current})
    report_lag("sync", lag.measure(
        {(tp.topic, tp.partition): end for tp, end in ends.items() if tp in current}, time.time()))
