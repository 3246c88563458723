"""`returnsync reconcile` and `replay --dry-run`: report the drift between the state derived from
returns.events (agents/commands/replay.py's scan) and Klaviyo, and optionally repair it
(agents/klaviyo/reconcile.py). The report goes to stdout, as text or (`--json`) one JSON document;
customers in its examples are hashes unless `--show-customers`; logs and the drift gauge carry
counts only.
"""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

import orjson

from agents import metrics
from agents.commands.scan import Selection, open_consumer, rate_limited, scan, share
from agents.klaviyo.channels import Channels
from agents.klaviyo.client import KlaviyoError
from agents.klaviyo.reconcile import Drift, FloorsUnreadable, Repair, compare, read_floors, repair
from agents.klaviyo.record_drift import RecordDrift, compare_records
from agents.klaviyo.versions import MemoryVersions
from agents.settings import Settings
from agents.topic_plan import versions_topic
from streams.state import CustomerState


@dataclass(frozen=True)
class Output:
    json: bool = False
    show_customers: bool = False

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Output:
        return cls(json=args.json, show_customers=args.show_customers)

    def emit(self, drift: Drift, repaired: Repair | None = None, records: RecordDrift | None = None) -> None:
        """`records`: the return records' drift, when custom objects are on."""
        if not self.json:
            print(drift.report(show_customers=self.show_customers))
            if repaired is not None:
                print(repaired.report())
            if records is not None:
                print(records.report(show_customers=self.show_customers))
            return
        document = {"drift": drift.summary(show_customers=self.show_customers),
                    "repair": repaired.summary() if repaired is not None else None,
                    "records": records.summary(show_customers=self.show_customers) if records is not None
                    else None}
        print(orjson.dumps(document, default=str, option=orjson.OPT_INDENT_2).decode())


async def report_drift(
    settings: Settings, states: Mapping[str, CustomerState], *, fix: bool = False,
    rescan: Callable[[], Awaitable[Mapping[str, CustomerState]]] | None = None,
    output: Output = Output(),  # frozen, never mutated
) -> int:
    """Print the drift report; exit code 0 when there is none (or it was all repaired), 1 when
    there is, 2 when Klaviyo or the floors could not be read (so a failure never passes for drift
    or for none). `rescan` derives the state again when a repair must catch up with live delivery.
    With custom objects on, the return records are compared too (reported, never repaired here:
    `returnsync replay` rewrites them); records that drifted or could not be compared exit 1."""
    channels = Channels.from_settings(settings)
    try:
        try:
            drift = await compare(channels, states, settings.projection)
            records = (await compare_records(channels, states, settings.custom_objects_type)
                       if settings.custom_objects else None)
        except KlaviyoError as exc:
            print(f"could not read Klaviyo profiles or return objects: {exc}", file=sys.stderr)
            return 2
        metrics.RECONCILE_DRIFT_PROFILES.set(len(drift.drifted))
        record_drift = records is not None and records.any
        if not (drift.drifted and fix):
            output.emit(drift, records=records)
            return 1 if drift.drifted or record_drift else 0
        newest, attempts = dict(states), 0

        async def current(keys: Sequence[str]) -> Mapping[str, CustomerState]:
            nonlocal attempts
            attempts += 1
            if attempts > 1 and rescan is not None:  # a retry: live delivery moved on meanwhile
                newest.update(await rescan())
            return {key: newest[key] for key in keys if key in newest}

        async def floors(keys: Sequence[str]) -> MemoryVersions:
            return await read_floors(settings.kafka(), versions_topic(settings), keys)

        try:
            fixed = await repair(channels, drift.drifted, current, floors, settings.projection,
                                 unseen_ok=True)
        except (KlaviyoError, FloorsUnreadable) as exc:
            output.emit(drift, records=records)
            print(f"repair stopped: {exc}", file=sys.stderr)
            return 2
        output.emit(drift, fixed, records)
        metrics.RECONCILE_DRIFT_PROFILES.set(len(drift.drifted) - len(fixed.repaired))
        return 0 if fixed.resolved and not record_drift else 1
    finally:
        await channels.aclose()


async def dry_run(settings: Settings, selection: Selection, output: Output) -> int:
    """`replay --dry-run`: the drift of the profiles the replay would write. Reads only."""
    consumer = await open_consumer(settings, None)
    try:
        scanned = await scan(consumer, settings.topics.events, selection, item_lines=settings.custom_objects)
    finally:
        await consumer.stop()
    return await report_drift(settings, scanned.touched(), output=output)


async def run_reconcile(settings: Settings, args: argparse.Namespace) -> int:
    consumer = await open_consumer(settings, None)
    try:
        scanned = await scan(consumer, settings.topics.events, Selection(tenant=args.tenant),
                               item_lines=settings.custom_objects)
    finally:
        await consumer.stop()
    keys = sorted(scanned.states)
    if args.sample and args.sample < len(keys):
        keys = random.sample(keys, args.sample)  # a sample, not a secret
    states = {key: scanned.states[key] for key in keys}

    async def rescan() -> Mapping[str, CustomerState]:
        consumer = await open_consumer(settings, None)
        try:
            return (await scan(consumer, settings.topics.events, Selection(tenant=args.tenant),
                               progress=False, item_lines=settings.custom_objects)).states
        finally:
            await consumer.stop()

    return await report_drift(rate_limited(settings, args.rate_share), states, fix=args.repair, rescan=rescan,
                              output=Output.from_args(args))


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout instead of text")
    parser.add_argument("--show-customers", action="store_true",
                        help="name customers by email in the examples (default: a short hash)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_output_arguments(parser)
    parser.add_argument("--sample", type=int, default=1000, help="customers to compare (0: all)")
    parser.add_argument("--repair", action="store_true", help="write the derived profile where it drifted")
    parser.add_argument("--tenant", help="only this tenant's customers")
    parser.add_argument("--rate-share", type=share, default=0.5,
                        help="share of the account's Klaviyo limits to use (default 0.5)")
