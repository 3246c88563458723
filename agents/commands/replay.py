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
version), and with RETURNSYNC_CUSTOM_OBJECTS the records of all its returns; later records carry
version 0, which the version floors turn into events-only deliveries, and on resume the
customers already written get their floor back. A finished replay
commits the ends, so running it again sends nothing; a fresh rebuild takes a new `--name`.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import replace

from aiokafka import AIOKafkaProducer, TopicPartition

from agents.commands.publish import progress_bar
from agents.commands.reconcile import Output, add_output_arguments, dry_run
from agents.commands.scan import ALL, Scan, Selection, open_consumer, rate_limited, scan, share, utc_time
from agents.deadletters import DeadLetters
from agents.klaviyo.channels import Channels
from agents.klaviyo.delivery import Delivery
from agents.klaviyo.pipeline import Pipeline
from agents.klaviyo.versions import Floor, MemoryVersions
from agents.settings import Settings
from streams.outbox import SyncRecord

log = logging.getLogger(__name__)
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


async def run_replay(settings: Settings, args: argparse.Namespace) -> int:
    selection = Selection(since_ms=args.since, until_ms=args.until, from_offsets=args.from_offset or {},
                          to_offsets=args.to_offset or {}, tenant=args.tenant)
    topic = settings.topics.events
    if (args.json or args.show_customers) and not args.dry_run:
        print("--json and --show-customers shape the --dry-run report", file=sys.stderr)
        return 2
    if args.dry_run:
        return await dry_run(rate_limited(settings, args.rate_share), selection, Output.from_args(args))
    group = f"{settings.app_id}-replay-{args.name}"
    consumer = await open_consumer(settings, group)
    producer = AIOKafkaProducer(**settings.kafka().client_options(), acks="all")
    await producer.start()
    channels = Channels.from_settings(rate_limited(settings, args.rate_share))
    try:
        scanned = await scan(consumer, topic, selection, resume=True, item_lines=settings.custom_objects)

        dead_letters = DeadLetters(
            lambda key, record: producer.send_and_wait(settings.topics.deadletter, key=key, value=record))
        delivery = Delivery(channels, settings.projection, dead_letters.send, resumed_floors(scanned),
                            settings.custom_objects_title if settings.custom_objects else None,
                            rebuild_records=True)
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
    add_output_arguments(parser)  # the dry run's report


def _rfc3339(text: str) -> int:
    """An RFC 3339 time as epoch milliseconds, the unit of Kafka record timestamps."""
    return int(utc_time(text).timestamp() * 1000)


def _offsets(text: str) -> dict[int, int]:
    offsets: dict[int, int] = {}
    try:
        for part in text.split(","):
            partition, _, offset = part.rpartition(":")
            offsets[int(partition) if partition else ALL] = int(offset)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected N or P:N[,P:N...]") from None
    return offsets

