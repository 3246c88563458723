"""The sync agent: sync records -> Klaviyo, on a consumer of its own.

It is deliberately not a Faust stream. Faust feeds every agent from one fetcher, so a sync agent
stuck behind a Klaviyo outage would fill its buffer and starve the state agent, and Faust's
shutdown would wait on it forever. A separate consumer group pauses only itself, commits only
after Klaviyo accepted a batch (at-least-once), and is cancelled on shutdown or revocation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError

from agents import metrics
from agents.app import Runtime
from agents.klaviyo.client import KlaviyoClient
from agents.klaviyo.delivery import Delivery
from agents.lag import report_lag
from streams.deadletter import dead_letter
from streams.errors import Reason, Stage
from streams.outbox import SyncRecord, decode_sync_record

log = logging.getLogger(__name__)


class _CancelOnRevoke(ConsumerRebalanceListener):  # type: ignore[misc]
    """A revoked partition's batch must not land after its new owner's newer one."""

    def __init__(self) -> None:
        self.inflight: asyncio.Task[None] | None = None

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        task = self.inflight
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        return None


def register(runtime: Runtime) -> None:
    settings = runtime.settings

    async def send_dead_letter(key: str, record: bytes) -> None:
        await runtime.deadletter.send(key=key.encode(), value=record)

    @runtime.app.task  # type: ignore[untyped-decorator]
    async def klaviyo_sync() -> None:
        client = KlaviyoClient(
            api_key=settings.klaviyo_api_key or "",
            base_url=settings.klaviyo_base_url,
            revision=settings.klaviyo_revision,
        )
        delivery = Delivery(client, settings.projection, send_dead_letter)
        consumer = AIOKafkaConsumer(
            runtime.sync_topic_name,
            bootstrap_servers=runtime.bootstrap_servers,
            group_id=f"{settings.app_id}-klaviyo-sync",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=int(settings.session_timeout * 1000),
            heartbeat_interval_ms=int(max(0.5, min(3.0, settings.session_timeout / 4)) * 1000),
            # A batch may wait out a long Klaviyo outage before it is acknowledged.
            max_poll_interval_ms=3_600_000,
        )
        listener = _CancelOnRevoke()
        consumer.subscribe([runtime.sync_topic_name], listener=listener)
        await consumer.start()
        try:
            while True:
                await _deliver_next_batch(consumer, delivery, listener, runtime)
        finally:
            with contextlib.suppress(Exception):
                await consumer.stop()
            await client.aclose()


async def _deliver_next_batch(
    consumer: AIOKafkaConsumer, delivery: Delivery, listener: _CancelOnRevoke, runtime: Runtime
) -> None:
    settings = runtime.settings
    batches = await consumer.getmany(
        timeout_ms=int(settings.sync_batch_seconds * 1000), max_records=settings.sync_batch_size
    )
    _report_sync_lag(consumer, batches)
    messages = [message for partition in batches.values() for message in partition]
    if not messages:
        return
    records = await _decode(messages, runtime)
    listener.inflight = asyncio.ensure_future(delivery.deliver(records))
    try:
        await listener.inflight
    except asyncio.CancelledError:
        if not listener.inflight.cancelled():
            raise  # we are being stopped, not revoked
        log.info("sync batch cancelled by a rebalance; the new owner redelivers it")
        return
    finally:
        listener.inflight = None
    offsets = {tp: batch[-1].offset + 1 for tp, batch in batches.items() if batch}
    try:
        await consumer.commit(offsets)
    except (CommitFailedError, KafkaError) as exc:
        # Lost the partitions meanwhile: the new owner redelivers; Klaviyo writes are idempotent.
        log.warning("sync commit failed (redelivery follows): %s", exc)


async def _decode(messages: list[Any], runtime: Runtime) -> list[SyncRecord]:
    records = []
    for message in messages:
        try:
            records.append(decode_sync_record(message.value))
        except Exception as exc:  # written by us: a bad one is a bug, kept for replay
            log.exception("unreadable sync record offset=%s", message.offset)
            metrics.DEADLETTERS.labels(Stage.SYNC.value, Reason.PROCESSING_ERROR.value).inc()
            await runtime.deadletter.send(
                key=message.key,
                value=dead_letter(stage=Stage.SYNC, reason=Reason.PROCESSING_ERROR, error=repr(exc),
                                  original=message.value, at=datetime.now(UTC)),
            )
    return records


def _report_sync_lag(consumer: AIOKafkaConsumer, batches: dict[TopicPartition, list[Any]]) -> None:
    now = time.time()
    measured = []
    for tp in consumer.assignment():
        highwater = consumer.highwater(tp)
        if highwater is None:
            continue
        fetched = batches.get(tp)
        position = fetched[0].offset if fetched else highwater
        lag = max(0, highwater - position)
        oldest = fetched[0].timestamp / 1000 if fetched else now
        measured.append(((tp.topic, str(tp.partition)), lag, max(0.0, now - oldest) if lag else 0.0))
    report_lag("sync", measured)
