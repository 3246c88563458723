"""Reading returns.events for the operator commands: the whole topic reduced in memory with the
fold's reducer (what replay sends and what reconcile compares), under a rate share of Klaviyo.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from agents.commands.publish import progress_bar
from agents.offsets import capture_ends
from agents.settings import Settings
from streams.codec import decode_event
from streams.errors import RejectedInput
from streams.events import ReturnEvent
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
               progress: bool = True, resume: bool = False, item_lines: bool = False) -> Scan:
    """Reduce the topic from its beginning to the ends captured now; select what to send.
    `item_lines`: as the state agent folds with custom objects on (`apply_event`)."""
    result = Scan()
    async for message in read_to_end(consumer, topic, result.ends, progress=progress):
        _reduce(result, selection, message.partition, message, item_lines)
    if resume:
        for tp in result.ends:
            result.committed[tp.partition] = await consumer.committed(tp) or 0
    return result


async def read_to_end(consumer: AIOKafkaConsumer, topic: str, ends: dict[TopicPartition, int], *,
                      starts: Mapping[int, int] | None = None, progress: bool = False) -> AsyncIterator[Any]:
    """Every record of `topic` from its beginning (or `starts`, per partition) to the ends captured
    now, which are left in `ends`; records written meanwhile are not read."""
    partitions = consumer.partitions_for_topic(topic)
    if not partitions:
        await consumer.topics()  # refreshes metadata
        partitions = consumer.partitions_for_topic(topic) or set()
    tps = [TopicPartition(topic, p) for p in sorted(partitions)]
    if not tps:
        return
    consumer.assign(tps)
    listed = await consumer.end_offsets(tps)
    beginnings = await consumer.beginning_offsets(tps)
    await consumer.seek_to_beginning(*tps)
    for tp in tps:
        if starts and tp.partition in starts:
            consumer.seek(tp, max(starts[tp.partition], beginnings[tp]))
    started, done = time.monotonic(), 0
    remaining = list(tps)
    while remaining:
        batches = await consumer.getmany(*remaining, timeout_ms=500, max_records=5000)
        capture_ends(consumer, tps, listed, ends, give_up=time.monotonic() - started > 30)
        for tp, messages in batches.items():
            for message in messages:
                if tp in ends and message.offset < ends[tp]:
                    yield message
                    done += 1
        remaining = [tp for tp in remaining if tp not in ends or await consumer.position(tp) < ends[tp]]
        total = sum(ends.get(tp, listed[tp]) - beginnings[tp] for tp in tps)
        if progress and total:
            progress_bar(done, total, started)
    if progress and done:
        sys.stderr.write("  (scanned)\n")


def _reduce(result: Scan, selection: Selection, partition: int, message: object, item_lines: bool) -> None:
    try:
        event = decode_event(message.value)  # type: ignore[attr-defined]
    except RejectedInput:
        result.unreadable += 1  # dead-lettered by the state agent when it was live
        return
    if selection.tenant is not None and event.tenant != selection.tenant:
        return
    key = event.customer_key
    outcome = apply_event(result.states.get(key), event, item_lines=item_lines)
    result.states[key] = outcome.state
    offset, timestamp = message.offset, message.timestamp  # type: ignore[attr-defined]
    if outcome.applied is not Applied.DUPLICATE and selection.covers(partition, offset, timestamp):
        ingested = datetime.fromtimestamp(timestamp / 1000, UTC)
        result.selected.append(Pending(partition, offset, event, outcome.applied, ingested))


def rate_limited(settings: Settings, share: float) -> Settings:
    """The replay's own budgets: `share` of what this service may spend on the account."""
    return settings.with_overrides(klaviyo_rate_limit_scale=settings.klaviyo_rate_limit_scale * share)


def utc_time(text: str) -> datetime:
    """An RFC 3339 command-line time, which must say its offset; in UTC."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: not an RFC 3339 time") from None
    if value.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r}: needs a UTC offset (e.g. Z)")
    return value.astimezone(UTC)


def share(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError("--rate-share must be in (0, 1]")
    return value
