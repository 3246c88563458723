"""What every adapter shares: the result type, event ids, and one event builder per webhook."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import StrEnum

from streams.events import (
    DEFAULT_TENANT,
    Customer,
    EventType,
    Outcome,
    ReturnEvent,
    ReturnItem,
    event_from_dict,
    event_to_dict,
    format_time,
    normalise_email,
)
from streams.raw import RawWebhook

TENANT_HEADER = "x-returnsync-tenant"


class Skip(StrEnum):
    """Why a well-formed webhook yields no event by design. Stable strings: metrics label them."""

    EMPTY_PAYLOAD = "empty_payload"
    """Loop sends `{}` for a topic/trigger pair that does not fit."""
    NO_CUSTOMER = "no_customer"
    """A topic that never names the customer (Loop label, restock, ...): nothing to key it by."""
    NOT_A_RETURN = "not_a_return"
    """A Shopify refund that belongs to no return (an order edit, a cancellation)."""
    NO_CHANGE = "no_change"
    """A known event that changes neither status nor money (a drop-off QR code was generated)."""
    ORDER_NOT_COUNTED = "order_not_counted"
    """A Shopify order that joined its customer, but whose total, currency or line items could
    not be read: no `order.placed` is made of it, so the return rate leaves it out."""


@dataclass(frozen=True, slots=True)
class OrderCustomer:
    """Shopify `orders/*`: who placed an order. Remember it under `order_key` for the join."""

    order_key: str
    customer: Customer


@dataclass(frozen=True, slots=True)
class Normalized:
    """Everything one raw webhook means. `events` is what goes to `returns.events`; the other
    fields are for the caller to count or act on, so nothing is ever dropped silently."""

    events: tuple[ReturnEvent, ...] = ()
    unknown_status: str | None = None
    """A platform status word with no canonical mapping: no status event was made for it (money
    facts still were). Count it per source; add it to the adapter's map once understood."""
    skipped: Skip | None = None
    """Set when the webhook yields no events by design; count it per source and reason."""
    order_customer: OrderCustomer | None = None
    """Shopify `orders/*` only: store it, then re-normalize webhooks awaiting this order."""
    awaiting_order: str | None = None
    """Shopify `returns/*`, `refunds/create` only: the order key whose customer is not known
    yet. Park the raw webhook under this key and normalize it again once it is."""


CustomerLookup = Callable[[str], Customer | None]
"""Order key -> that order's customer, if known (a table's `.get`)."""


def tenant_of(raw: RawWebhook) -> str:
    # Validated with the event (1-64 of [A-Za-z0-9_.-]); a bad header dead-letters, not guesses.
    return raw.headers.get(TENANT_HEADER, "").strip() or DEFAULT_TENANT


def snapshot_id(source: str, trigger: str, resource_id: str, version: datetime | None, body: bytes) -> str:
    """The id of a platform event that has none: the same snapshot re-sent gets the same id,
    any change to it (a new version time, one byte of body) gets a new one."""
    digest = hashlib.sha256()
    for part in (source, trigger, resource_id, format_time(version) if version else ""):
        encoded = part.encode("utf-8", "surrogatepass")
        # Length-prefixed so ("ab", "c") and ("a", "bc") cannot hash alike.
        digest.update(len(encoded).to_bytes(8, "big") + encoded)
    digest.update(body)
    return f"{source}:{digest.hexdigest()[:32]}"


def fact_id(source: str, kind: str, *parts: str) -> str:
    """A derived fact's id, the same in every snapshot that carries the fact: `loop:refund:987`."""
    return ":".join((source, kind, *parts))


def outcome_of(outcomes: Iterable[Outcome]) -> Outcome | None:
    distinct = set(outcomes)
    if not distinct:
        return None
    return distinct.pop() if len(distinct) == 1 else Outcome.MIXED


def customer(
    email: str | None,
    *,
    first_name: str | None = None,
    last_name: str | None = None,
    external_id: str | None = None,
) -> Customer | None:
    if not email:
        return None
    return Customer(normalise_email(email), external_id, first_name, last_name)


def split_name(name: str | None) -> tuple[str | None, str | None]:
    """`"Jane van Doe"` -> ("Jane", "van Doe"): platforms that give one name field lose nothing."""
    if not name:
        return None, None
    first, _, last = name.strip().partition(" ")
    return first or None, last.strip() or None


@dataclass(frozen=True, slots=True)
class Context:
    """The fields every event of one webhook shares."""

    source: str
    tenant: str
    customer: Customer
    return_id: str | None
    order_ref: str | None = None
    currency: str | None = None

    def event(
        self,
        type: EventType,
        event_id: str,
        occurred_at: datetime,
        *,
        status_raw: str | None = None,
        outcome: Outcome | None = None,
        amount: Decimal | None = None,
        items: Iterable[ReturnItem] = (),
        currency: str | None = None,
        new_order_ref: str | None = None,
        item_count: int | None = None,
    ) -> ReturnEvent:
        return ReturnEvent(
            event_id=event_id,
            type=type,
            occurred_at=occurred_at,
            customer=self.customer,
            tenant=self.tenant,
            source=self.source,
            return_id=self.return_id,
            order_ref=self.order_ref,
            status_raw=status_raw,
            outcome=outcome,
            amount=amount,
            currency=currency or (self.currency if amount is not None else None),
            items=tuple(items),
            new_order_ref=new_order_ref,
            item_count=item_count,
        )


def read_status(
    word: str,
    states: Mapping[str, EventType | None],
    progress: str | None = None,
    progress_states: Mapping[str, EventType | None] | None = None,
) -> tuple[EventType | None, str, str | None]:
    """A snapshot's status: (canonical status or None, the platform word that decided it, a word
    with no mapping or None). Words match case-insensitively; a known word may map to None
    (no status change). While approved, the parcel's progress (Loop `label_status`, Swap
    `shipping_status`) can move it further, and then that word is the one kept verbatim.
    """
    if word.lower() not in states:
        return None, word, word
    status = states[word.lower()]
    if status is not EventType.RETURN_APPROVED or progress is None or progress_states is None:
        return status, word, None
    if progress.lower() not in progress_states:
        return status, word, progress
    further = progress_states[progress.lower()]
    return (further, progress, None) if further is not None else (status, word, None)


def snapshot_status(
    ctx: Context,
    *,
    status: EventType | None,
    status_raw: str | None,
    event_id: str,
    occurred_at: datetime,
    created_at: datetime,
    items: tuple[ReturnItem, ...],
    amount: Decimal | None,
    outcome: Outcome | None,
) -> list[ReturnEvent]:
    """The status facts of a whole-return snapshot (Loop, Redo, Swap).

    Besides the snapshot's own status, every snapshot restates that the return was requested, at
    its creation time and under one stable id: these platforms often open a return straight into
    `open`, and without it Klaviyo would never see `Return Requested` (nor its per-item events)
    for them. The stable id makes the restatement free downstream; `created_at` being the
    earliest time of the return means it never moves a status back.
    """
    assert ctx.return_id is not None  # snapshots always carry their return id
    requested_id = fact_id(ctx.source, "requested", ctx.return_id)

    def status_event(type: EventType, event_id: str, at: datetime, raw: str | None) -> ReturnEvent:
        return ctx.event(type, event_id, at, status_raw=raw, items=items, amount=amount, outcome=outcome)

    if status is EventType.RETURN_REQUESTED:
        return [status_event(status, requested_id, created_at, status_raw)]
    events = [status_event(EventType.RETURN_REQUESTED, requested_id, created_at, None)]
    if status is not None:
        events.append(status_event(status, event_id, occurred_at, status_raw))
    return events


def validated(events: Iterable[ReturnEvent]) -> tuple[ReturnEvent, ...]:
    """Run each event through the canonical validator, exactly as a producer's would be.

    One place decides what a valid event is (email shape, tenant, currency, id length); an
    adapter can never emit an event that `POST /events` would refuse, and whatever it emits
    round-trips through the wire form unchanged.
    """
    return tuple(event_from_dict(event_to_dict(event)) for event in events)
