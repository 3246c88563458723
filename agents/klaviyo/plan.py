"""Which Klaviyo requests carry a batch: single endpoints for latency, bulk ones for volume. Pure.

The switch comes from the rate limits themselves. `capacity` is how many single requests the
endpoint's budget lets out right now (at most its burst: 75 profile-imports, 350 events per
second, less once the 60 s window runs low). A batch that fits goes out as singles and lands in
one round trip; a batch that does not would wait seconds to a minute for tokens, so it goes in
bulk requests instead: up to 10,000 profiles or 1,000 events each, within 5 MB.

Timeline events also go in bulk when there are enough of them (`BULK_EVENTS_MIN`) and the bulk
budget has more than a reserve left now: a customer with many events in one batch (a hot key:
hundreds of returns under one shared email) costs one request for them, not one each. The
reserve (`BULK_RESERVE`) is for the batches that have no other way: more events than the singles
budget lets out now.

An item Klaviyo could never accept for its size (a profile over 100 KB, an event whose request
would pass 5 MB) is `refused` here and never sent: Klaviyo would only answer 413, and each of
those answers spends a token the other customers need.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from agents.klaviyo.bodies import (
    bulk_event_entry,
    bulk_event_item,
    bulk_events_body,
    bulk_profile_item,
    bulk_profiles_body,
    encode,
    profile_import_body,
)
from agents.klaviyo.ratelimit import KLAVIYO_LIMITS
from streams.outbox import CustomerDelivery
from streams.projection import KlaviyoEvent

BULK_PROFILES_MAX = 10_000
BULK_EVENTS_MAX = 1_000
PAYLOAD_MAX = 5_000_000  # decimal, the stricter reading of "5MB"
PROFILE_MAX = 100_000  # per profile in a bulk import; profile-import caps the whole request there
_ENVELOPE_MARGIN = 1_000
# A bulk event request spends a token of a scarce budget (10/s, 150/min against 350/s, 3,500/min
# for singles) to save singles: worth it from this many events, while more than BULK_RESERVE of
# its tokens are left for batches that must go bulk.
BULK_EVENTS_MIN = 10
BULK_RESERVE = KLAVIYO_LIMITS["event-bulk-create-jobs"].burst_per_second // 2


@dataclass(frozen=True, slots=True)
class ProfileWrite:
    customer_key: str
    version: int
    item: dict[str, Any]  # the bulk-import item; profile-import sends the same with nulls instead
    single: dict[str, Any]  # the POST /api/profile-import body
    size: int  # of the item in a bulk request, its separating comma included
    single_size: int = 0

    @property
    def email(self) -> str:
        return str(self.item["attributes"]["email"])

    @property
    def too_large(self) -> str | None:
        """Why Klaviyo would refuse this write for its size on either endpoint, or None."""
        size = max(self.size - 1, self.single_size)
        if size > PROFILE_MAX:
            return f"profile of {size:,} bytes exceeds Klaviyo's {PROFILE_MAX // 1000} KB per profile"
        return None


@dataclass(frozen=True, slots=True)
class EventWrite:
    customer_key: str
    event: KlaviyoEvent
    item: dict[str, Any]
    size: int  # of the item in a bulk request, its separating comma included

    @property
    def too_large(self) -> str | None:
        """Why Klaviyo would refuse this event for its size: alone in a bulk request it would pass
        5 MB (its POST /api/events body, the same item with the profile inside, is smaller)."""
        size = self.size + _entry_size(self.event.email) + _EVENTS_OVERHEAD
        if size > PAYLOAD_MAX:
            return f"event of {size:,} bytes exceeds Klaviyo's {PAYLOAD_MAX // 1_000_000} MB per request"
        return None


W = TypeVar("W", ProfileWrite, EventWrite)


@dataclass(frozen=True, slots=True)
class Plan(Generic[W]):
    singles: list[W]
    chunks: list[list[W]]  # one bulk request each
    refused: list[W]  # never sent: too large for any request Klaviyo accepts


def profile_writes(deliveries: Iterable[CustomerDelivery]) -> list[ProfileWrite]:
    writes = []
    for delivery in deliveries:
        item = bulk_profile_item(delivery.profile)
        single = profile_import_body(delivery.profile)
        writes.append(ProfileWrite(delivery.customer_key, delivery.version, item, single,
                                   len(encode(item)) + 1, len(encode(single))))
    return writes


def event_writes(deliveries: Iterable[CustomerDelivery]) -> list[EventWrite]:
    """Every event once per account: the same email, metric and unique_id is one Klaviyo event
    (two tenants may share an account), and a repeat would fail a whole bulk request."""
    seen: set[tuple[str, str, str]] = set()
    writes = []
    for delivery in deliveries:
        for event in delivery.events:
            key = (event.email.strip().lower(), event.metric, event.unique_id)
            if key in seen:
                continue
            seen.add(key)
            item = bulk_event_item(event)
            writes.append(EventWrite(delivery.customer_key, event, item, len(encode(item)) + 1))
    return writes


def plan_profiles(writes: Sequence[ProfileWrite], capacity: int) -> Plan[ProfileWrite]:
    """Single profile-imports while the budget lets them out now, else bulk import chunks."""
    refused = [write for write in writes if write.too_large]
    fit = [write for write in writes if not write.too_large]
    if len(fit) <= capacity:
        return Plan(fit, [], refused)
    return Plan([], chunk_profiles(fit), refused)


def plan_events(writes: Sequence[EventWrite], capacity: int, bulk_capacity: int = 0) -> Plan[EventWrite]:
    """Bulk when singles would wait for the budget, or when there are enough events and the bulk
    budget (`bulk_capacity`: requests it lets out now) is above its reserve; else singles."""
    refused = [write for write in writes if write.too_large]
    fit = [write for write in writes if not write.too_large]
    if len(fit) > capacity or (len(fit) >= BULK_EVENTS_MIN and bulk_capacity > BULK_RESERVE):
        return Plan([], chunk_events(fit), refused)
    return Plan(fit, [], refused)


class Sized(Protocol):
    @property
    def size(self) -> int: ...  # bytes in a bulk request body, separating comma included


S = TypeVar("S", bound=Sized)


def chunked(writes: Sequence[S], *, most: int, payload_max: int, overhead: int) -> list[list[S]]:
    """In order, bulk requests of at most `most` writes whose sizes, with the body's `overhead`,
    stay within `payload_max` bytes (a write alone over it gets a chunk of its own: callers
    refuse those before)."""
    chunks: list[list[S]] = []
    current: list[S] = []
    size = overhead
    for write in writes:
        if current and (len(current) >= most or size + write.size > payload_max):
            chunks.append(current)
            current, size = [], overhead
        current.append(write)
        size += write.size
    if current:
        chunks.append(current)
    return chunks


def chunk_profiles(writes: Sequence[ProfileWrite]) -> list[list[ProfileWrite]]:
    overhead = len(encode(bulk_profiles_body([]))) + _ENVELOPE_MARGIN
    return chunked(writes, most=BULK_PROFILES_MAX, payload_max=PAYLOAD_MAX, overhead=overhead)


def chunk_events(writes: Sequence[EventWrite]) -> list[list[EventWrite]]:
    """In order, ≤1,000 events and ≤5 MB per request, counting one entry per profile."""
    overhead = len(encode(bulk_events_body([]))) + _ENVELOPE_MARGIN
    chunks: list[list[EventWrite]] = []
    current: list[EventWrite] = []
    emails: set[str] = set()
    size = overhead
    for write in writes:
        email = write.event.email
        extra = write.size + (0 if email in emails else _entry_size(email))
        if current and (len(current) >= BULK_EVENTS_MAX or size + extra > PAYLOAD_MAX):
            chunks.append(current)
            current, emails, size = [], set(), overhead
            extra = write.size + _entry_size(email)
        current.append(write)
        emails.add(email)
        size += extra
    if current:
        chunks.append(current)
    return chunks


def event_entries(writes: Sequence[EventWrite]) -> list[list[EventWrite]]:
    """Group one request's events by profile, in first-seen order: entry i, event j."""
    entries: dict[str, list[EventWrite]] = {}
    for write in writes:
        entries.setdefault(write.event.email, []).append(write)
    return list(entries.values())


def bulk_events_request(entries: Sequence[Sequence[EventWrite]]) -> dict[str, Any]:
    return bulk_events_body(
        [bulk_event_entry(group[0].event.email, [write.item for write in group]) for group in entries]
    )


def bulk_profiles_request(writes: Sequence[ProfileWrite]) -> dict[str, Any]:
    return bulk_profiles_body([write.item for write in writes])


def _entry_size(email: str) -> int:
    return len(encode(bulk_event_entry(email, []))) + 1


_EVENTS_OVERHEAD = len(encode(bulk_events_body([]))) + _ENVELOPE_MARGIN
