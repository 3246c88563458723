"""`returnsync replay`: rebuild Klaviyo from returns.events, under a consumer group of its own.

1. Scan: reduce the whole topic, from its beginning to the ends captured at start, in memory with
   the state agent's reducer; nothing is sent. A range (time, offsets, tenant) selects what is
   *sent*: its events, and the profiles of the customers they touch, each at the customer's
   newest state, so a replay never writes an older snapshot over a newer one.
2. Send: the selected records in (partition, offset) order, in batches through the delivery
   engine (coalesced, bulk when large), `backfill=true`, the live unique_ids. The group
   `<app_id>-replay-<name>` commits offsets only once a batch settled at Klaviyo (bulk jobs
   included), strictly in order (klaviyo/pipeline.py).

Resume: a restart scans again from the beginning (the state is whole) and sends only records at
or past the committed offsets. A customer's profile rides with its first selected record (final
version); later records carry version 0, which the version floors turn into events-only
deliveries, and on resume the customers already written get their floor back. A finished replay
commits the ends, so running it again sends nothing; a fresh rebuild takes a new `--name`.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from agents.commands.publish import progress_bar
from agents.klaviyo.channels import Channels
from agents.klaviyo.delivery import Delivery
from agents.klaviyo.pipeline import Pipeline
from agents.klaviyo.versions import Floor, MemoryVersions
from agents.offsets import capture_ends
from agents.settings import Settings
from streams.codec import decode_event
from streams.errors import RejectedInput
from streams.events import ReturnEvent
from streams.outbox import SyncRecord
from streams.reducer import Applied, apply_event
from streams.state import CustomerState

log = logging.getLogger(__name__)
ALL = -1  # an offset option without a partition applies to every partition


@dataclass(frozen=True)
class Selection:
    """What a replay sends: a time range (record timestamps), an offset range, one tenant."""

    since_ms: int | None = None
    until_ms: int | None = None
    from_offsets: Mapping[int, int] = field(default_factory=dict)
    to_offsets: Mapping[int, int] = field(default_factory=dict)  # exclusive, like end offsets
    tenant: str | None = None

    def covers(self, partition: int, offset: int, timestamp_ms: int) -> bool:
        """Per-partition --from-offset values name the partitions replayed; --to-offset values
        only bound them (a partition without one runs to the captured end)."""
        if self.from_offsets and partition not in self.from_offsets and ALL not in self.from_offsets:
            return False
        low = self.from_offsets.get(partition, self.from_offsets.get(ALL, 0))
        high = self.to_offsets.get(partition, self.to_offsets.get(ALL))
        return (offset >= low and (high is None or offset < high)
                and (self.since_ms is None or timestamp_ms >= self.since_ms)
                and (self.until_ms is None or timestamp_ms < self.until_ms))


@dataclass(frozen=True, slots=True)
class Pending:
    partition: int
    offset: int
    event: ReturnEvent
    applied: Applied
    ingested_at: datetime


@dataclass
class Scan:
    states: dict[str, CustomerState] = field(default_factory=dict)
    selected: list[Pending] = field(default_factory=list)
    ends: dict[TopicPartition, int] = field(default_factory=dict)
    committed: dict[int, int] = field(default_factory=dict)
    unreadable: int = 0

    def touched(self) -> dict[str, CustomerState]:
        """The customers the selected records belong to: whose profiles the replay writes."""
        keys = dict.fromkeys(pending.event.customer_key for pending in self.selected)
        return {key: self.states[key] for key in keys}


async def open_consumer(settings: Settings, group_id: str | None) -> AIOKafkaConsumer:
    consumer = AIOKafkaConsumer(**settings.kafka().client_options(), group_id=group_id,
                                enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    return consumer


async def scan(consumer: AIOKafkaConsumer, topic: str, selection: Selection, *,
               progress: bool = True, resume: bool = False) -> Scan:
    """Reduce the topic from its beginning to the ends captured now; select what to send."""
    partitions = consumer.partitions_for_topic(topic)
    if not partitions:
        await consumer.topics()  # refreshes metadata
        partitions = consumer.partitions_for_topic(topic) or set()
    tps = [TopicPartition(topic, p) for p in sorted(partitions)]
    result = Scan()
    if not tps:
        return result
    consumer.assign(tps)
    listed = await consumer.end_offsets(tps)
    starts = await consumer.beginning_offsets(tps)
    if resume:
        for tp in tps:
            result.committed[tp.partition] = await consumer.committed(tp) or 0
    await consumer.seek_to_beginning(*tps)
    started, done = time.monotonic(), 0
    remaining = list(tps)
    while remaining:
        batches = await consumer.getmany(*remaining, timeout_ms=500, max_records=5000)
        capture_ends(consumer, tps, listed, result.ends, give_up=time.monotonic() - started > 30)
        for tp, messages in batches.items():
            for message in messages:
                if tp in result.ends and message.offset < result.ends[tp]:
                    _reduce(result, selection, tp.partition, message)
                    done += 1
        remaining = [tp for tp in remaining
                     if tp not in result.ends or await consumer.position(tp) < result.ends[tp]]
        total = sum(result.ends.get(tp, listed[tp]) - starts[tp] for tp in tps)
        if progress and total:
            progress_bar(done, total, started)
    if progress and done:
        sys.stderr.write("  (scanned)\n")
    return result


def _reduce(result: Scan, selection: Selection, partition: int, message: object) -> None:
    try:
        event = decode_event(message.value)  # type: ignore[attr-defined]
    except RejectedInput:
        result.unreadable += 1  # dead-lettered by the state agent when it was live
        return
    if selection.tenant is not None and event.tenant != selection.tenant:
        return
    key = event.customer_key
    outcome = apply_event(result.states.get(key), event)
    result.states[key] = outcome.state
    offset, timestamp = message.offset, message.timestamp  # type: ignore[attr-defined]
    if outcome.applied is not Applied.DUPLICATE and selection.covers(partition, offset, timestamp):
        ingested = datetime.fromtimestamp(timestamp / 1000, UTC)
        result.selected.append(Pending(partition, offset, event, outcome.applied, ingested))


async def send(scan_result: Scan, delivery: Delivery, pipeline: Pipeline, topic: str, *,
               batch_size: int, progress: bool = True) -> int:
    """Deliver the selected records not yet committed; returns how many were sent."""
    committed = scan_result.committed
    done = [p for p in scan_result.selected if p.offset < committed.get(p.partition, 0)]
    todo = sorted((p for p in scan_result.selected if p.offset >= committed.get(p.partition, 0)),
                  key=lambda p: (p.partition, p.offset))
    profiled = {p.event.customer_key for p in done}
    started = time.monotonic()
    for start in range(0, len(todo), batch_size):
        batch = todo[start:start + batch_size]
        records = []
        for pending in batch:
            key = pending.event.customer_key
            final = scan_result.states[key]
            state = final if key not in profiled else replace(final, version=0)
            profiled.add(key)
            records.append(SyncRecord(state, pending.event, pending.applied, pending.ingested_at,
                                      backfill=True))
        settled = await delivery.submit(records)
        pipeline.add({TopicPartition(topic, p.partition): p.offset + 1 for p in batch}, settled)
        await pipeline.commit_settled()
        if pipeline.full:
            await pipeline.wait_head()
        if progress:
            progress_bar(start + len(batch), len(todo), started)
    while len(pipeline):
        await pipeline.wait_head()
        await pipeline.commit_settled()
    if progress and todo:
        sys.stderr.write("\n")
    return len(todo)


def resumed_floors(scan_result: Scan) -> MemoryVersions:
    """Floors for the customers whose profile went out with an already committed record."""
    versions = MemoryVersions()
    for pending in scan_result.selected:
        if pending.offset < scan_result.committed.get(pending.partition, 0):
            key = pending.event.customer_key
            versions.mark(key, Floor(scan_result.states[key].version))
    return versions


def rate_limited(settings: Settings, share: float) -> Settings:
    """The replay's own budgets: `share` of what this service may spend on the account."""
    return settings.with_overrides(klaviyo_rate_limit_scale=settings.klaviyo_rate_limit_scale * share)


async def run_replay(settings: Settings, args: argparse.Namespace) -> int:
    selection = Selection(since_ms=args.since, until_ms=args.until, from_offsets=args.from_offset or {},
                          to_offsets=args.to_offset or {}, tenant=args.tenant)
    topic = settings.topics.events
    if args.dry_run:
        from agents.commands.reconcile import dry_run

        return await dry_run(rate_limited(settings, args.rate_share), selection)
    group = f"{settings.app_id}-replay-{args.name}"
    consumer = await open_consumer(settings, group)
    producer = AIOKafkaProducer(**settings.kafka().client_options(), acks="all")
    await producer.start()
    channels = Channels.from_settings(rate_limited(settings, args.rate_share))
    try:
        scanned = await scan(consumer, topic, selection, resume=True)

        async def dead_letter(key: str, record: bytes) -> None:
            await producer.send_and_wait(settings.topics.deadletter, key=key.encode(), value=record)

        delivery = Delivery(channels, settings.projection, dead_letter, resumed_floors(scanned))
        pipeline = Pipeline(consumer.commit, depth=2)
        sent = await send(scanned, delivery, pipeline, topic, batch_size=args.batch_size)
        if scanned.ends:
            await consumer.commit(scanned.ends)  # the whole range is done, skipped records too
        before, profiles = len(scanned.selected) - sent, len(scanned.touched())
        log.info("replay finished group=%s sent=%d already_delivered=%d customers=%d unreadable=%d",
                 group, sent, before, profiles, scanned.unreadable)
        print(f"replay {args.name}: {sent} records delivered ({before} already delivered before), "
              f"{profiles} profiles", file=sys.stderr)
        return 0
    finally:
        await channels.aclose()
        await producer.stop()
        await consumer.stop()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--from-beginning", action="store_true", help="the whole topic")
    what.add_argument("--since", type=_rfc3339, help="records stamped at or after (RFC 3339)")
    what.add_argument("--from-offset", type=_offsets, metavar="[P:]N[,P:N]",
                      help="first offset, for every partition or per partition")
    parser.add_argument("--until", type=_rfc3339, help="records stamped before (RFC 3339)")
    parser.add_argument("--to-offset", type=_offsets, metavar="[P:]N[,P:N]", help="end offset, exclusive")
    parser.add_argument("--tenant", help="only this tenant's customers")
    parser.add_argument("--name", default="rebuild", help="replay name: group <app_id>-replay-<name>")
    parser.add_argument("--rate-share", type=share, default=0.5,
                        help="share of the account's Klaviyo limits this replay may use (default 0.5)")
    parser.add_argument("--batch-size", type=int, default=5000, help="records per delivery batch")
    parser.add_argument("--dry-run", action="store_true",
                        help="read Klaviyo, report drift from the derived state, write nothing")


def _rfc3339(text: str) -> int:
    """An RFC 3339 time as epoch milliseconds, the unit of Kafka record timestamps."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: not an RFC 3339 time") from None
    if value.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r}: needs a UTC offset (e.g. Z)")
    return int(value.timestamp() * 1000)


def _offsets(text: str) -> dict[int, int]:
    offsets: dict[int, int] = {}
    try:
        for part in text.split(","):
            partition, _, offset = part.rpartition(":")
            offsets[int(partition) if partition else ALL] = int(offset)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected N or P:N[,P:N...]") from None
    return offsets


def share(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError("--rate-share must be in (0, 1]")
    return value
