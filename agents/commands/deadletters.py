"""`returnsync deadletters list | show | redrive`: find, read and re-drive `returns.deadletter`.

`list` counts by stage and reason, then lists entries (newest last); `show P:OFFSET` prints one
record whole. Customers appear as hashes and emails in error texts as `<email>` unless
`--show-customers`.

`redrive` puts each selected original back at the start of its stage (streams/redrive.py),
records each dead letter it re-drove on `<app>-deadletter-redrives` (so `list` shows it and a
second `redrive` skips it unless `--again`), then follows the pipeline until the workers have
consumed what it published (`--wait`) and reports what was dead-lettered again.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from agents.commands.scan import open_consumer, read_to_end, utc_time
from agents.kafka import KafkaConnection
from agents.offsets import fetched_ends
from agents.settings import Settings
from agents.topic_plan import redrives_topic, sync_topic
from streams.deadletter import DeadLetter, hide_emails, read_dead_letter
from streams.errors import Stage
from streams.events import customer_ref, format_time
from streams.redrive import Redrive, Refused, Target, Verify, redrive
from streams.signatures import verify_proof

CUSTOMER_STAGES = {Stage.STATE.value, Stage.SYNC.value}
"""Stages whose dead letters are keyed by customer key (an email): hashed unless asked."""


@dataclass(frozen=True, slots=True)
class Entry:
    partition: int
    offset: int
    key: bytes | None
    letter: DeadLetter | None
    unreadable: str = ""

    @property
    def ref(self) -> str:
        return f"{self.partition}:{self.offset}"


@dataclass(frozen=True, slots=True)
class Filter:
    stage: str | None = None
    reason: str | None = None
    since: datetime | None = None
    refs: frozenset[str] = frozenset()

    def covers(self, entry: Entry) -> bool:
        letter = entry.letter
        if letter is None:
            return False
        return ((self.stage is None or letter.stage == self.stage)
                and (self.reason is None or letter.reason == self.reason)
                and (self.since is None or (letter.at is not None and letter.at >= self.since))
                and (not self.refs or entry.ref in self.refs))


@dataclass
class Outcome:
    """One redrive: what went where, what could not go, what came back."""

    published: dict[str, list[str]] = field(default_factory=dict)  # entry ref -> topic:p:o written
    refused: dict[str, str] = field(default_factory=dict)  # entry ref -> why
    failed_again: list[dict[str, Any]] = field(default_factory=list)
    settled: bool = True


# -- reading -------------------------------------------------------------------------------------

async def read_entries(settings: Settings) -> tuple[list[Entry], dict[str, dict[str, Any]]]:
    """Every dead letter, and the latest redrive record of each (by entry ref)."""
    entries = [_entry(message) for message in await _read(settings, settings.topics.deadletter)]
    notes = await _read(settings, redrives_topic(settings))
    redrives = {message.key.decode(): orjson.loads(message.value)
                for message in notes if message.key and message.value}
    return entries, redrives


async def _read(settings: Settings, topic: str, starts: Mapping[int, int] | None = None) -> list[Any]:
    # A consumer per topic: aiokafka's metadata of an assigned consumer covers its assignment only.
    consumer = await open_consumer(settings, None)
    try:
        return [message async for message in read_to_end(consumer, topic, {}, starts=starts)]
    finally:
        await consumer.stop()


def _entry(message: Any) -> Entry:
    try:
        letter = read_dead_letter(message.value)
    except ValueError as exc:
        return Entry(message.partition, message.offset, message.key, None, str(exc))
    return Entry(message.partition, message.offset, message.key, letter)


def shown_key(entry: Entry, show_customers: bool) -> str:
    if not entry.key:
        return "-"
    key = entry.key.decode("utf-8", "replace")
    if entry.letter is not None and entry.letter.stage in CUSTOMER_STAGES and not show_customers:
        return customer_ref(key)
    return key


def summary(entry: Entry, redrives: Mapping[str, dict[str, Any]], show_customers: bool) -> dict[str, Any]:
    letter = entry.letter
    assert letter is not None
    error = letter.error if show_customers else hide_emails(letter.error)
    return {"ref": entry.ref, "at": format_time(letter.at) if letter.at else None, "stage": letter.stage,
            "reason": letter.reason, "origin": dict(letter.origin), "key": shown_key(entry, show_customers),
            "error": error, "redriven": redrives.get(entry.ref)}


# -- list and show -------------------------------------------------------------------------------

async def run_list(settings: Settings, args: argparse.Namespace) -> int:
    entries, redrives = await read_entries(settings)
    selection = _filter(args)
    chosen = [entry for entry in entries if selection.covers(entry)]
    counts = Counter((e.letter.stage, e.letter.reason) for e in chosen if e.letter is not None)
    shown = [summary(entry, redrives, args.show_customers) for entry in chosen[-args.limit:]]
    unreadable = [entry.ref for entry in entries if entry.letter is None]
    if args.json:
        by_reason = [{"stage": stage, "reason": reason, "count": count}
                     for (stage, reason), count in sorted(counts.items())]
        print(orjson.dumps({"topic": settings.topics.deadletter, "total": len(chosen), "counts": by_reason,
                            "entries": shown, "unreadable": unreadable}, option=orjson.OPT_INDENT_2).decode())
        return 0
    redriven = sum(1 for entry in chosen if entry.ref in redrives)
    print(f"{settings.topics.deadletter}: {len(chosen)} dead letters ({redriven} re-driven)")
    for (stage, reason), count in sorted(counts.items()):
        print(f"  {stage:<10} {reason:<22} {count}")
    if shown:
        print(f"\n{'entry':<10} {'at':<20} {'stage':<10} {'reason':<20} {'origin':<28} {'key':<24} error")
    for row in shown:
        origin = ":".join(str(row["origin"][name]) for name in ("topic", "partition", "offset")
                          if name in row["origin"]) or row["origin"].get("source", "-")
        mark = " [re-driven]" if row["redriven"] else ""
        at = f"{row['at'][:19]}Z" if row["at"] else "-"  # to the second: the JSON has it whole
        print(f"{row['ref']:<10} {at:<20} {row['stage']:<10} {row['reason']:<20} "
              f"{origin:<28} {row['key']:<24} {_short(row['error'])}{mark}")
    if len(chosen) > len(shown):
        print(f"({len(chosen) - len(shown)} older entries not shown; --limit to see more)")
    if unreadable:
        print(f"{len(unreadable)} records are not dead letters: {', '.join(unreadable[:10])}")
    return 0


async def run_show(settings: Settings, args: argparse.Namespace) -> int:
    entries, redrives = await read_entries(settings)
    entry = next((e for e in entries if e.ref == args.entry), None)
    if entry is None or entry.letter is None:
        why = "not found" if entry is None else f"not a dead letter: {entry.unreadable}"
        print(f"{settings.topics.deadletter} {args.entry}: {why}", file=sys.stderr)
        return 1
    document = summary(entry, redrives, args.show_customers)
    original = entry.letter.original.decode("utf-8", "replace")
    document["original"] = original if args.show_customers else hide_emails(original)
    print(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode())
    return 0


# -- redrive -------------------------------------------------------------------------------------

async def run_redrive(settings: Settings, args: argparse.Namespace) -> int:
    entries, redrives = await read_entries(settings)
    selected = [e for e in entries if _filter(args).covers(e)]
    chosen = [e for e in selected if args.again or e.ref not in redrives]
    skipped = len(selected) - len(chosen)
    plans: dict[str, Redrive | Refused] = {}
    for entry in chosen:
        assert entry.letter is not None
        plans[entry.ref] = redrive(entry.letter, entry.key, _verifier(settings))
    customers = {plan.customer_key for plan in plans.values()
                 if isinstance(plan, Redrive) and plan.target is Target.CUSTOMER}
    history = await customer_events(settings, customers) if customers else {}
    records, outcome = _records(plans, history, settings)
    if args.dry_run:
        _print_plan(records, outcome, skipped, settings)
        return 0
    start = await _ends(settings.kafka(), settings.topics.deadletter)
    await publish(settings, records, outcome, args.again)
    if args.wait > 0 and outcome.published:
        await follow(settings, outcome, records, start, args.wait)
    _print_outcome(outcome, skipped, args.show_customers)
    return 1 if outcome.refused or outcome.failed_again or not outcome.settled else 0


def _verifier(settings: Settings) -> Verify:
    def verify(source: str, kept: Mapping[str, str], body: bytes) -> bool | None:
        secret = settings.webhook_secrets.get(source)
        if secret is None:
            return None
        return verify_proof(source, kept, body, secret, swap_header=settings.swap_signature_header)

    return verify


async def customer_events(settings: Settings, customers: set[str]) -> dict[str, list[tuple[bytes, bytes]]]:
    """Each customer's records on returns.events, in order, as (key, value)."""
    found: dict[str, list[tuple[bytes, bytes]]] = {customer: [] for customer in customers}
    wanted = {customer.encode(): customer for customer in customers}
    consumer = await open_consumer(settings, None)
    try:
        async for message in read_to_end(consumer, settings.topics.events, {}, progress=True):
            customer = wanted.get(message.key) if message.key else None
            if customer is not None and message.value is not None:
                found[customer].append((message.key, message.value))
    finally:
        await consumer.stop()
    return found


Planned = dict[str, tuple[str, list[tuple[bytes | None, bytes]]]]
"""entry ref -> (topic, records to publish)."""


def _records(plans: Mapping[str, Redrive | Refused], history: Mapping[str, list[tuple[bytes, bytes]]],
             settings: Settings) -> tuple[Planned, Outcome]:
    outcome, records = Outcome(), Planned()
    for ref, plan in plans.items():
        if isinstance(plan, Refused):
            outcome.refused[ref] = plan.why
        elif plan.target is Target.CUSTOMER:
            events = history.get(plan.customer_key, [])
            if not events:
                outcome.refused[ref] = "none of the customer's events is left on returns.events"
            else:
                records[ref] = (settings.topics.events, list[tuple[bytes | None, bytes]](events))
        else:
            topic = settings.topics.raw if plan.target is Target.RAW else settings.topics.events
            records[ref] = (topic, [(plan.key, plan.value)])
    return records, outcome


async def publish(settings: Settings, records: Planned, outcome: Outcome, again: bool) -> None:
    """Each entry's records (acks=all), then its redrive record: a crash between the two re-drives
    that entry again next time, which the originals' ids make harmless."""
    run = uuid.uuid4().hex[:12]
    producer = AIOKafkaProducer(**settings.kafka().client_options(), acks="all")
    await producer.start()
    try:
        for ref, (topic, batch) in records.items():
            sent = [await producer.send_and_wait(topic, key=key, value=value) for key, value in batch]
            outcome.published[ref] = [f"{meta.topic}:{meta.partition}:{meta.offset}" for meta in sent]
            note = {"redrive": run, "at": format_time(datetime.now(UTC)), "published": outcome.published[ref],
                    "again": again}
            await producer.send_and_wait(redrives_topic(settings), key=ref.encode(), value=orjson.dumps(note))
    finally:
        await producer.stop()


async def follow(settings: Settings, outcome: Outcome, records: Planned, start: Mapping[TopicPartition, int],
                 within: float) -> None:
    """Until the workers consumed what was published, through every stage to Klaviyo; then the
    dead letters written since `start` for these records (by origin) or keys failed again."""
    deadline = time.monotonic() + within
    written = [_tp_offset(where) for refs in outcome.published.values() for where in refs]
    published: dict[TopicPartition, int] = {}
    for tp, offset in written:
        published[tp] = max(published.get(tp, 0), offset + 1)
    kafka, group = settings.kafka(), settings.app_id
    # Each stage once the one before has consumed: normalize or the fold, the fold after
    # normalize, then Klaviyo delivery (which commits only what Klaviyo accepted).
    settled = await _committed_past(settings, group, published, deadline)
    if settled and any(tp.topic == settings.topics.raw for tp in published):
        settled = await _committed_past(settings, group, await _ends(kafka, settings.topics.events), deadline)
    if settled:
        delivered = await _ends(kafka, sync_topic(settings))
        settled = await _committed_past(settings, f"{settings.app_id}-klaviyo-sync", delivered, deadline)
    outcome.settled = settled
    keys = {key for _, batch in records.values() for key, _ in batch if key}
    origins = {(tp.topic, tp.partition, offset) for tp, offset in written}
    since = {tp.partition: offset for tp, offset in start.items()}
    for message in await _read(settings, settings.topics.deadletter, since):
        entry = _entry(message)
        letter = entry.letter
        if letter is None:
            continue
        origin = (letter.origin.get("topic"), letter.origin.get("partition"), letter.origin.get("offset"))
        if origin in origins or entry.key in keys:
            outcome.failed_again.append({"ref": entry.ref, "stage": letter.stage, "reason": letter.reason,
                                         "error": hide_emails(letter.error)})


async def _ends(kafka: KafkaConnection, topic: str) -> dict[TopicPartition, int]:
    """Where `topic`'s partitions end now (exact on Tansu too: agents/offsets.py)."""
    consumer = AIOKafkaConsumer(**kafka.client_options(), enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer.topics()  # metadata
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        listed = await consumer.end_offsets(tps) if tps else {}
    finally:
        await consumer.stop()
    return await fetched_ends(kafka, listed)


def _tp_offset(where: str) -> tuple[TopicPartition, int]:
    topic, partition, offset = where.rsplit(":", 2)
    return TopicPartition(topic, int(partition)), int(offset)


async def _committed_past(settings: Settings, group: str, wanted: Mapping[TopicPartition, int],
                          deadline: float) -> bool:
    """Whether `group` commits at or past `wanted` on every partition before the deadline."""
    consumer = await open_consumer(settings, group)
    try:
        while True:
            behind = [tp for tp, offset in wanted.items() if offset > 0
                      and (await consumer.committed(tp) or 0) < offset]
            if not behind:
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.5)  # polling the group's commits: there is nothing to wait on
    finally:
        await consumer.stop()


def _print_plan(records: Planned, outcome: Outcome, skipped: int, settings: Settings) -> None:
    by_topic = Counter(topic for topic, _ in records.values())
    print(f"dry run: {len(records)} dead letters would be re-driven, {len(outcome.refused)} cannot be"
          f"{f', {skipped} already re-driven (--again to include them)' if skipped else ''}")
    for topic, count in sorted(by_topic.items()):
        published = sum(len(batch) for t, batch in records.values() if t == topic)
        print(f"  -> {topic}: {count} dead letters, {published} records")
    for ref, why in outcome.refused.items():
        print(f"  {ref}: not re-drivable: {why}")


def _print_outcome(outcome: Outcome, skipped: int, show_customers: bool) -> None:
    records = sum(len(where) for where in outcome.published.values())
    print(f"re-driven: {len(outcome.published)} dead letters ({records} records); "
          f"not re-drivable: {len(outcome.refused)}; failed again: {len(outcome.failed_again)}"
          f"{f'; {skipped} already re-driven (--again to include them)' if skipped else ''}")
    for ref, why in outcome.refused.items():
        print(f"  {ref}: not re-drivable: {why}")
    for again in outcome.failed_again:
        print(f"  failed again: {again['ref']} stage={again['stage']} reason={again['reason']} "
              f"{_short(again['error'])}")
    if not outcome.settled:
        print("  the workers have not consumed everything yet (--wait): run `returnsync deadletters list` "
              "later to see whether anything failed again")


def _filter(args: argparse.Namespace) -> Filter:
    return Filter(stage=args.stage, reason=args.reason, since=args.since,
                  refs=frozenset(getattr(args, "entries", None) or ()))


def _short(text: str, width: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="counts by stage and reason, then entries")
    show = actions.add_parser("show", help="one dead letter, whole")
    again = actions.add_parser("redrive", help="put dead letters back at the start of their stage")
    for sub in (listing, again):
        sub.add_argument("--stage", choices=[stage.value for stage in Stage])
        sub.add_argument("--reason", help="e.g. no_secret, processing_error, klaviyo_rejected")
        sub.add_argument("--since", type=utc_time, help="dead-lettered at or after (RFC 3339)")
    for sub in (listing, show, again):
        sub.add_argument("--show-customers", action="store_true", help="customer keys and emails in clear")
    listing.add_argument("--json", action="store_true", help="one JSON document")
    listing.add_argument("--limit", type=int, default=50, help="entries shown, newest (default 50)")
    show.add_argument("entry", metavar="PARTITION:OFFSET")
    again.add_argument("--entry", dest="entries", action="append", metavar="PARTITION:OFFSET",
                       help="only these dead letters (repeatable)")
    again.add_argument("--dry-run", action="store_true", help="say what would be re-driven, publish nothing")
    again.add_argument("--again", action="store_true", help="include dead letters already re-driven")
    again.add_argument("--wait", type=float, default=120.0,
                       help="seconds to follow the re-driven records through the workers (0: do not)")


async def run(settings: Settings, args: argparse.Namespace) -> int:
    actions = {"list": run_list, "show": run_show, "redrive": run_redrive}
    return await actions[args.action](settings, args)
