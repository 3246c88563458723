"""Drift between derived state and Klaviyo, and its safe repair: shared by `returnsync reconcile`,
`replay --dry-run` (agents/commands/reconcile.py) and the worker's scheduled reconcile.

Klaviyo's side is read with GET /api/profiles, 100 emails per request, under the caller's rate
budget.

A repair writes profiles beside live delivery, so it obeys live delivery's version floors (the
`<sync topic>-versions` topic, agents/klaviyo/highwater.py) without ever writing them: it writes
a customer's newest known state only when live delivery has already written exactly that
version, so it can neither overtake live delivery nor undo it. Live delivery records a floor
before each write, so a floor read once the repair's write has returned shows any newer write
that may have landed first; that customer is then written again with its newest state.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from agents.kafka import KafkaConnection
from agents.klaviyo.bodies import profile_import_body
from agents.klaviyo.channels import Channels
from agents.klaviyo.client import KlaviyoRejected
from agents.klaviyo.highwater import decode_record
from agents.klaviyo.versions import Floor, MemoryVersions
from agents.offsets import capture_ends
from streams.events import customer_ref
from streams.partitioning import expected_partition
from streams.projection import ProjectionConfig, profile_properties, profile_update
from streams.state import CustomerState

log = logging.getLogger(__name__)

EXAMPLES = 5
MISSING = "(no profile)"


@dataclass
class Drift:
    compared: int = 0
    drifted: dict[str, list[str]] = field(default_factory=dict)  # customer key -> properties
    per_property: Counter[str] = field(default_factory=Counter)
    examples: list[tuple[str, str, str, Any, Any]] = field(default_factory=list)
    """(customer key, email, property, derived, klaviyo)."""

    def add(self, state: CustomerState, differences: Mapping[str, tuple[Any, Any]]) -> None:
        self.compared += 1
        if not differences:
            return
        self.drifted[state.customer_key] = sorted(differences)
        self.per_property.update(differences.keys())
        for name, (wanted, got) in sorted(differences.items()):
            if len(self.examples) < EXAMPLES:
                self.examples.append((state.customer_key, state.identity.email, name, wanted, got))

    def report(self, *, show_customers: bool = False) -> str:
        """For a terminal. Customers appear as hashes (customer_ref) unless `show_customers`."""
        lines = [f"compared {self.compared} profiles: {len(self.drifted)} drifted"]
        lines += [f"  {name}: {count}" for name, count in self.per_property.most_common()]
        if self.examples:
            who = "email" if show_customers else "customer"
            lines.append(f"examples ({who}, property, derived, klaviyo):")
            lines += [f"  {_who(key, email, show_customers)} {name}: {wanted!r} != {got!r}"
                      for key, email, name, wanted, got in self.examples]
        return "\n".join(lines)

    def summary(self, *, show_customers: bool = False) -> dict[str, Any]:
        """The same, for a machine (`--json`)."""
        return {
            "compared": self.compared,
            "drifted": len(self.drifted),
            "per_property": dict(self.per_property.most_common()),
            "examples": [{"customer": _who(key, email, show_customers), "property": name,
                          "derived": wanted, "klaviyo": got}
                         for key, email, name, wanted, got in self.examples],
        }


def _who(customer_key: str, email: str, show_customers: bool) -> str:
    return email if show_customers else customer_ref(customer_key)


def differences(wanted: Mapping[str, Any], got: Mapping[str, Any] | None) -> dict[str, tuple[Any, Any]]:
    """Properties whose Klaviyo value differs from the derived one (None and absent are equal)."""
    if got is None:
        return {MISSING: (True, None)}
    return {name: (value, got.get(name)) for name, value in wanted.items() if not _same(value, got.get(name))}


def _same(wanted: Any, got: Any) -> bool:
    if wanted is None or got is None:
        return wanted is None and got is None
    if isinstance(wanted, bool) or isinstance(got, bool):
        return wanted is got
    if isinstance(wanted, Decimal | int | float) and isinstance(got, int | float):
        return math.isclose(float(wanted), float(got), rel_tol=1e-9, abs_tol=1e-9)
    if isinstance(wanted, list | tuple) and isinstance(got, list | tuple):
        return list(wanted) == list(got)
    return bool(wanted == got)


async def compare(channels: Channels, states: Mapping[str, CustomerState], config: ProjectionConfig) -> Drift:
    drift = Drift()
    by_channel: dict[Any, list[CustomerState]] = {}
    for state in states.values():
        by_channel.setdefault(channels.for_tenant(state.customer_key.split("/", 1)[0]), []).append(state)
    for channel, group in by_channel.items():
        emails = [state.identity.email for state in group]
        found = await channel.client.profiles_by_email(emails)
        klaviyo = {str(p["attributes"].get("email", "")).lower(): p["attributes"].get("properties") or {}
                   for p in found}
        for state in group:
            got = klaviyo.get(state.identity.email.lower())
            drift.add(state, differences(profile_properties(state, config), got))
    return drift


# --- repair ------------------------------------------------------------------------------------

REPAIR_ATTEMPTS = 3
FLOORS_READ_SECONDS = 60.0


class Verdict(StrEnum):
    """What a repair does with one drifted customer."""

    WRITE = "write"
    BEHIND = "behind"  # live delivery wrote a newer version than the newest state known here
    IN_FLIGHT = "in_flight"  # live delivery has not written this version yet (or its bulk job runs)
    GONE = "gone"  # no current state here: the customer's partition belongs to another worker
    SUPERSEDED = "superseded"  # a newer live write follows the repair's: nothing left to fix
    WAIT = "wait"  # the repair's write may sit on a newer live write and cannot be fixed yet


def verdict(
    version: int | None, floor: Floor | None, job_done: bool, *, unseen_ok: bool, seen: int | None
) -> Verdict:
    """May the newest known state (`version`; None: none) be written, given live delivery's floor?

    Live delivery admits a version at or above the floor (streams.outbox.admit); a repair admits
    only the floor's own version, settled (no bulk job pending): a higher one is live delivery's to
    write in order, a lower one is older than what it wrote. `unseen_ok`: no floor means no live
    writer (the CLI against a Klaviyo only a replay wrote) rather than one that has not got there.

    `seen` is None until the repair wrote this customer. After a write, it is the floor read once
    that write had returned, above the version written: a live write of `seen` may have landed
    first. Any floor above `seen` was recorded, so sent, after the repair's write returned.
    """
    if seen is None:
        if version is None:
            return Verdict.GONE
        if floor is None:
            return Verdict.WRITE if unseen_ok else Verdict.IN_FLIGHT
        if floor.version > version:
            return Verdict.BEHIND
        if floor.version < version or not job_done:
            return Verdict.IN_FLIGHT
        return Verdict.WRITE
    if floor is not None and floor.version > seen:
        return Verdict.SUPERSEDED
    if version is not None and version > seen:
        return Verdict.SUPERSEDED  # not recorded yet, so its live write comes after the repair's
    if version == seen and job_done:
        return Verdict.WRITE
    return Verdict.WAIT


@dataclass
class Repair:
    repaired: list[str] = field(default_factory=list)
    left: Counter[Verdict] = field(default_factory=Counter)
    """Drifted customers left to live delivery, by why."""
    failed: list[str] = field(default_factory=list)  # Klaviyo refused the write (permanent 4xx)
    unsettled: list[str] = field(default_factory=list)
    """Written, but perhaps over a newer live write, and still so after every attempt."""

    def report(self) -> str:
        lines = [f"repaired {len(self.repaired)} profiles"]
        lines += [f"  left to live delivery ({reason.value}): {count}"
                  for reason, count in sorted(self.left.items())]
        if self.failed:
            lines.append(f"  refused by Klaviyo: {len(self.failed)}")
        if self.unsettled:
            lines.append(f"  still changing, may hold an older state: {len(self.unsettled)} (run again)")
        return "\n".join(lines)

    def summary(self) -> dict[str, Any]:
        """Counts only, for a machine (`--json`)."""
        return {"repaired": len(self.repaired),
                "left_to_live_delivery": {reason.value: count for reason, count in sorted(self.left.items())},
                "refused": len(self.failed), "unsettled": len(self.unsettled), "resolved": self.resolved}

    @property
    def resolved(self) -> bool:
        """Nothing drifted is left behind: repaired, or a newer live write follows."""
        return not self.failed and not self.unsettled and set(self.left) <= {Verdict.SUPERSEDED}


States = Callable[[Sequence[str]], Awaitable[Mapping[str, CustomerState]]]
"""customer keys -> the newest state known for each (absent: none)."""
Floors = Callable[[Sequence[str]], Awaitable[MemoryVersions]]
"""customer keys -> live delivery's floors for them, as recorded now."""


async def repair(
    channels: Channels, keys: Iterable[str], current: States, floors: Floors, config: ProjectionConfig,
    *, unseen_ok: bool, attempts: int = REPAIR_ATTEMPTS,
) -> Repair:
    """Write the newest state of each drifted customer where live delivery allows (see `verdict`)."""
    result = Repair()
    seen: dict[str, int] = {}
    pending = list(dict.fromkeys(keys))
    for _ in range(attempts):
        if not pending:
            break
        states, versions = await current(pending), await floors(pending)
        writes, waiting = [], []
        for key in pending:
            state, floor = states.get(key), versions.floor(key)
            job_done = floor is None or floor.job is None or versions.job_complete(floor.job)
            decided = verdict(state.version if state is not None else None, floor, job_done,
                              unseen_ok=unseen_ok, seen=seen.get(key))
            if decided is Verdict.WRITE and state is not None:
                writes.append(state)
            elif decided is Verdict.WAIT:
                waiting.append(key)
            else:
                result.left[decided] += 1
        accepted = await asyncio.gather(*(_write(channels, state, config) for state in writes))
        written = [state for state, ok in zip(writes, accepted, strict=True) if ok]
        result.failed += [state.customer_key for state, ok in zip(writes, accepted, strict=True) if not ok]
        after = await floors([state.customer_key for state in written]) if written else MemoryVersions()
        pending = waiting
        for state in written:
            key = state.customer_key
            if after.version(key) > state.version:
                seen[key] = after.version(key)
                pending.append(key)
            else:
                result.repaired.append(key)
    result.unsettled = pending
    return result


async def _write(channels: Channels, state: CustomerState, config: ProjectionConfig) -> bool:
    channel = channels.for_tenant(state.customer_key.split("/", 1)[0])
    try:
        await channel.client.import_profile(profile_import_body(profile_update(state, config)))
    except KlaviyoRejected as exc:
        log.warning("reconcile repair refused customer=%s status=%s detail=%s",
                    customer_ref(state.customer_key), exc.status, exc.detail)
        return False
    return True


class FloorsUnreadable(Exception):
    """Live delivery's floors could not be read: nothing may be repaired without them."""


async def read_floors(kafka: KafkaConnection, topic: str, keys: Sequence[str]) -> MemoryVersions:
    """Live delivery's floors for `keys`, as recorded by now: their partitions read to the end."""
    floors, wanted = MemoryVersions(), set(keys)
    if not wanted:
        return floors
    consumer = AIOKafkaConsumer(**kafka.client_options(), enable_auto_commit=False)
    await consumer.start()
    try:
        if topic not in await consumer.topics():
            return floors
        count = len(consumer.partitions_for_topic(topic) or ())
        tps = sorted({TopicPartition(topic, expected_partition(key.encode(), count)) for key in wanted})
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        listed = await consumer.end_offsets(tps)
        ends: dict[TopicPartition, int] = {}
        started = time.monotonic()
        remaining = list(tps)
        while remaining:
            if time.monotonic() - started > FLOORS_READ_SECONDS:
                raise FloorsUnreadable(f"{topic} not read to its end within {FLOORS_READ_SECONDS:.0f}s")
            batches = await consumer.getmany(*remaining, timeout_ms=200)
            # This consumer was created after the caller's writes returned: its first fetch's
            # high watermark covers every floor recorded before them.
            capture_ends(consumer, tps, listed, ends, give_up=time.monotonic() - started > 10)
            for messages in batches.values():
                for message in messages:
                    _apply_floor(floors, wanted, message.key, message.value)
            remaining = [tp for tp in remaining if tp not in ends or await consumer.position(tp) < ends[tp]]
    finally:
        await consumer.stop()
    return floors


def _apply_floor(floors: MemoryVersions, wanted: set[str], key: bytes | None, value: bytes | None) -> None:
    record = decode_record(key, value)
    if record is None:
        return
    name, floor = record
    if floor is None:
        floors.mark_complete(name)  # a finished bulk job
    elif name in wanted:
        floors.mark(name, floor)


