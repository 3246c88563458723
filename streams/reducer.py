"""The reducer (SPEC §4): `apply_event(state, event)`, one small rule per event type.

Properties the rules keep, and the hypothesis tests check:
- an event id already applied changes nothing (idempotency);
- a return's status is the one of its greatest (occurred_at, rank, event id): any delivery order
  of the same status events ends on the same status, and an older one never moves it back;
- money facts are sums over distinct fact ids, so their order does not matter;
- orders are sums over distinct order refs, and never touch a return;
- a status event for a status the return already has is a repeat: recorded, never announced again;
- the state stays bounded whatever the history: beyond `CLOSED_KEPT` closed returns the oldest are
  settled (streams.state), and a settled return is final: an event for it never reopens it, moves
  it or counts it again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from streams import digests
from streams.events import EventType, Outcome, ReturnEvent, ReturnItem
from streams.frozen import replace
from streams.state import RETURNED_SKUS_LIMIT, STATUS_RANK, CustomerState, Identity, ReturnRecord, Stamp

CLOSED_KEPT = 8
"""Closed returns kept in full: the most recently closed (and the last return). Older ones are
settled. Eight leaves room for the reordering live traffic has (a late event lands while its
return is still kept, and is ordered by its time as usual) while a customer with thousands of
events stays a few KiB."""
UNCOUNTED_KEPT = 8
"""Returns only money facts were seen for (their status events late), kept to join their status
later. Beyond it the first seen are dropped: their money stays counted and deduplicated; if
their status events come after all, the return counts then, without the dropped outcome."""
RETURN_SKUS_LIMIT = 100
"""SKUs kept per return: enough for any real return, and one 20,000-line event cannot bloat state.
`item_count` still counts every item."""
RETURN_ITEMS_KEPT = 50
"""Item lines kept per return (for its custom-object record): the projection's listed-items
bound. `item_count` still counts every item."""
ITEM_TEXT_KEPT = 255
"""Item texts are kept cut like the projection cuts them: nothing longer is ever shown."""
_NO_TIME = datetime.min.replace(tzinfo=UTC)


class Applied(StrEnum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"
    OUT_OF_ORDER = "out_of_order"
    """Recorded, but an older status than the one the return already has: status not moved."""
    REPEATED = "repeated"
    """Recorded (details, version), but the return already had this status: nothing happened
    that the customer's timeline should show again."""


@dataclass(frozen=True, slots=True)
class Result:
    state: CustomerState
    applied: Applied


def initial_state(event: ReturnEvent) -> CustomerState:
    return CustomerState(customer_key=event.customer_key, identity=Identity(email=event.customer.email))


def apply_event(state: CustomerState | None, event: ReturnEvent, *, item_lines: bool = False) -> Result:
    """Apply one event. `state` None means the customer has no state yet. `item_lines`: keep each
    return's item lines (`ReturnRecord.items`), which only its custom-object record shows; off,
    they are not kept, as they would be a third of every state for nothing."""
    current = state if state is not None else initial_state(event)
    if _already_applied(current, event):
        return Result(current, Applied.DUPLICATE)
    rule = _for_settled if _of_settled_return(current, event) else RULES[event.type]
    updated, applied = rule(current, event)
    if not item_lines and updated is not current:
        updated = _without_item_lines(updated, event.return_id)
    identity = _identity(updated.identity, event)
    if updated is current and identity is current.identity:
        # Nothing to record (a restock, a late event for a settled return): the version stays,
        # so a redelivery of it is as much a no-op as the first delivery.
        return Result(current, applied)
    updated = replace(updated, identity=identity, version=updated.version + 1)
    return Result(_settled(updated), applied)


def reduce_events(
    events: Iterable[ReturnEvent], state: CustomerState | None = None, *, item_lines: bool = False
) -> CustomerState | None:
    for event in events:
        state = apply_event(state, event, item_lines=item_lines).state
    return state


def _without_item_lines(state: CustomerState, return_id: str | None) -> CustomerState:
    record = state.returns.get(return_id) if return_id else None
    if record is None or not record.items:
        return state
    return replace(state, returns={**state.returns, record.return_id: replace(record, items=())})


# ---------------------------------------------------------------------------------------------
# Rules: (state, event) -> (state, applied)

Rule = Callable[[CustomerState, ReturnEvent], tuple[CustomerState, Applied]]


def _status_changed(state: CustomerState, event: ReturnEvent) -> tuple[CustomerState, Applied]:
    assert event.return_id is not None  # guaranteed by event validation for return.* types
    record = state.returns.get(event.return_id) or ReturnRecord(return_id=event.return_id)
    status = event.type.status
    version = (event.occurred_at, STATUS_RANK[status], event.event_id)
    newer = record.status_version is None or version > record.status_version
    was_counted = record.counted
    repeated = record.status == status
    opened_at = event.occurred_at if record.opened_at is None else min(record.opened_at, event.occurred_at)
    # One replace per value, not one per change: a frozen dataclass costs a full __init__ each.
    changes: dict[str, Any] = {"opened_at": opened_at, "fact_ids": record.fact_ids | {event.event_id}}
    if newer:
        changes.update(status=status, status_version=version)
    if repeated:
        changes["repeated_ids"] = record.repeated_ids | {event.event_id}
    record = _with_outcome(_with_details(replace(record, **changes), event), event.outcome)
    first = opened_at if state.first_return_at is None else min(state.first_return_at, opened_at)
    state = _with_record(
        state, record, state.returns.get(event.return_id),
        return_count=state.return_count + (0 if was_counted else 1),
        first_return_at=first,
    )
    if repeated:
        return state, Applied.REPEATED
    return state, Applied.APPLIED if newer else Applied.OUT_OF_ORDER


def _refund_issued(state: CustomerState, event: ReturnEvent) -> tuple[CustomerState, Applied]:
    state = _record_fact(state, event, Outcome.REFUND, "refund_total")
    # Net spend subtracts refunds from orders only when they share a currency (CustomerState.net_spend).
    currencies = state.refund_currencies | {event.currency} if event.currency else state.refund_currencies
    total = state.refund_total + _amount(event)
    return replace(state, refund_total=total, refund_currencies=currencies), Applied.APPLIED


def _exchange_created(state: CustomerState, event: ReturnEvent) -> tuple[CustomerState, Applied]:
    state = _record_fact(state, event, Outcome.EXCHANGE)
    return replace(state, exchange_count=state.exchange_count + 1), Applied.APPLIED


def _store_credit_issued(state: CustomerState, event: ReturnEvent) -> tuple[CustomerState, Applied]:
    state = _record_fact(state, event, Outcome.STORE_CREDIT, "store_credit_total")
    total = state.store_credit_issued_total + _amount(event)
    return replace(state, store_credit_issued_total=total), Applied.APPLIED


def _store_credit_redeemed(state: CustomerState, event: ReturnEvent) -> tuple[CustomerState, Applied]:
    total = state.store_credit_redeemed_total + _amount(event)
    return replace(_remembered(state, event), store_credit_redeemed_total=total), Applied.APPLIED


def _item_restocked(state: CustomerState, event: ReturnEvent) -> tuple[CustomerState, Applied]:
    """A warehouse fact: it changes nothing the customer sees. Its id is kept on its return, so a
    redelivery is told apart while the return is kept; for a settled return it is not remembered,
    as applying it twice is applying it once."""
    if not event.return_id or _is_settled(state, event.return_id):
        return state, Applied.APPLIED
    previous = state.returns.get(event.return_id)
    record = previous or ReturnRecord(return_id=event.return_id)
    record = replace(record, fact_ids=record.fact_ids | {event.event_id})
    return _with_record(state, record, previous), Applied.APPLIED


def _order_placed(state: CustomerState, event: ReturnEvent) -> tuple[CustomerState, Applied]:
    """One more order, its units and its amount (in its currency). Counted once per `order_ref`
    (`_already_applied` turns a re-sent one away, whatever its event id). It touches no return:
    an order never opens, closes or counts one."""
    # Guaranteed by event validation for order.placed.
    assert event.order_ref and event.amount is not None and event.currency and event.item_count is not None
    total = state.order_totals.get(event.currency, Decimal(0)) + event.amount
    totals = {**state.order_totals, event.currency: total}
    return replace(
        state,
        order_count=state.order_count + 1,
        ordered_item_count=state.ordered_item_count + event.item_count,
        order_totals=totals,
        order_digests=digests.added(state.order_digests, digests.digest(event.order_ref)),
    ), Applied.APPLIED


def _for_settled(state: CustomerState, event: ReturnEvent) -> tuple[CustomerState, Applied]:
    """A status event for a settled return: late or re-sent, it never moves the return. It can
    only say the return opened earlier than the customer's first return was thought to."""
    first = state.first_return_at
    if first is not None and event.occurred_at < first:
        state = replace(state, first_return_at=event.occurred_at)
    return state, Applied.OUT_OF_ORDER


RULES: dict[EventType, Rule] = {
    **{event_type: _status_changed for event_type in EventType if event_type.is_status},
    EventType.REFUND_ISSUED: _refund_issued,
    EventType.EXCHANGE_CREATED: _exchange_created,
    EventType.STORE_CREDIT_ISSUED: _store_credit_issued,
    EventType.STORE_CREDIT_REDEEMED: _store_credit_redeemed,
    EventType.ITEM_RESTOCKED: _item_restocked,
    EventType.ORDER_PLACED: _order_placed,
}


# ---------------------------------------------------------------------------------------------
# Helpers shared by the rules.


def _already_applied(state: CustomerState, event: ReturnEvent) -> bool:
    """The id was applied: a money fact's at any age (its digest), any other event's while its
    return is kept. Any return's ids are looked at, not only the event's: an id names one fact,
    whatever a redelivery of it says. An order is known by its `order_ref`, at any age: a
    producer re-sending it under another id still places it once."""
    if event.type is EventType.ORDER_PLACED:
        assert event.order_ref is not None  # guaranteed by event validation
        known = state.order_digests
        return bool(known) and digests.contains(known, digests.digest(event.order_ref))
    if any(event.event_id in record.fact_ids for record in state.returns.values()):
        return True
    return bool(state.fact_digests) and digests.contains(state.fact_digests, digests.digest(event.event_id))


def _of_settled_return(state: CustomerState, event: ReturnEvent) -> bool:
    return event.type.is_status and event.return_id is not None and _is_settled(state, event.return_id)


def _is_settled(state: CustomerState, return_id: str) -> bool:
    return (
        bool(state.settled_returns)
        and return_id not in state.returns
        and digests.contains(state.settled_returns, digests.digest(return_id))
    )


def _amount(event: ReturnEvent) -> Decimal:
    return event.amount if event.amount is not None else Decimal(0)


def _record_fact(
    state: CustomerState, event: ReturnEvent, outcome: Outcome, total: str | None = None
) -> CustomerState:
    """Remember a money fact for good, and tie it to its return for the outcome (and its amount
    to the return's `total`, when one is named)."""
    state = _remembered(state, event)
    if not event.return_id:
        return state
    previous = state.returns.get(event.return_id)
    if previous is None and _is_settled(state, event.return_id):
        return state  # counted in the totals; a settled return's outcome no longer shows anywhere
    record = _with_outcome(_with_details(previous or ReturnRecord(return_id=event.return_id), event), outcome)
    if total is not None:
        record = replace(record, **{total: getattr(record, total) + _amount(event)})
    return _with_record(state, record, previous)


def _remembered(state: CustomerState, event: ReturnEvent) -> CustomerState:
    """A money fact's digest kept for good: its redelivery at any age is a duplicate."""
    return replace(state, fact_digests=digests.added(state.fact_digests, digests.digest(event.event_id)))


def _with_outcome(record: ReturnRecord, outcome: Outcome | None) -> ReturnRecord:
    if outcome is None:
        return record
    return replace(record, outcomes=record.outcomes | {outcome.value})


def _with_details(record: ReturnRecord, event: ReturnEvent) -> ReturnRecord:
    """Items, value, order and reason each come from the newest event that carries them.

    Each detail has its own stamp: with one stamp for all, an older event carrying the items was
    ignored when a newer one carrying only a value had arrived first.
    """
    details: dict[str, Any] = {
        "order_ref": event.order_ref, "source": event.source, "currency": event.currency,
    }
    if event.type.is_status:
        item_value = sum((item.value * item.quantity for item in event.items if item.value), Decimal(0))
        reasons = (item.reason or item.reason_parent for item in event.items)
        details["items"] = event.items or None
        details["reason"] = next((reason for reason in reasons if reason), None)
        details["value"] = event.amount if event.amount is not None else (item_value or None)
    newer, stamps = _newer_fields(details, record.details_version, event)
    if "items" in newer:
        items = newer.pop("items")
        newer["skus"] = tuple(dict.fromkeys(item.sku for item in items if item.sku))[:RETURN_SKUS_LIMIT]
        newer["item_count"] = sum(item.quantity for item in items)
        newer["items"] = tuple(_kept_line(item) for item in items[:RETURN_ITEMS_KEPT])
    return replace(record, **newer, details_version=stamps) if newer else record


def _kept_line(item: ReturnItem) -> dict[str, Any]:
    """An item line as the state keeps it (streams.state.ReturnRecord.items): texts cut."""
    line = {
        "sku": item.sku, "product_name": item.product_name, "variant_name": item.variant_name,
        "quantity": item.quantity, "value": str(item.value) if item.value is not None else None,
        "reason": item.reason, "reason_parent": item.reason_parent, "outcome": item.outcome,
        "new_sku": item.new_sku,
    }
    return {name: value[:ITEM_TEXT_KEPT] if isinstance(value, str) else value
            for name, value in line.items() if value is not None}


def _newer_fields(
    values: Mapping[str, Any], stamps: Mapping[str, Stamp], event: ReturnEvent
) -> tuple[dict[str, Any], dict[str, Stamp]]:
    """The values `event` carries that are newer than the stamped ones, and the updated stamps."""
    stamp = (event.occurred_at, event.event_id)
    newer = {
        name: value
        for name, value in values.items()
        if value is not None and (name not in stamps or stamp > stamps[name])
    }
    return newer, {**stamps, **dict.fromkeys(newer, stamp)}


def _with_record(
    state: CustomerState, record: ReturnRecord, previous: ReturnRecord | None, **changes: Any
) -> CustomerState:
    """`state` with `record` in place of `previous`, and any other `changes` in the same copy."""
    old_items = previous.item_count if previous is not None and previous.counted else 0
    new_items = record.item_count if record.counted else 0
    returns = {**state.returns, record.return_id: record}
    return replace(state, returns=returns, item_count=state.item_count + new_items - old_items, **changes)


def _identity(identity: Identity, event: ReturnEvent) -> Identity:
    """Each identifier comes from the newest event carrying it, stamped per field like details."""
    customer = event.customer
    values = {
        "external_id": customer.external_id,
        "first_name": customer.first_name,
        "last_name": customer.last_name,
    }
    newer, stamps = _newer_fields(values, identity.version, event)
    return replace(identity, **newer, version=stamps) if newer else identity


def _settled(state: CustomerState) -> CustomerState:
    """Settle closed returns beyond `CLOSED_KEPT`, the longest closed first, and drop uncounted
    ones beyond `UNCOUNTED_KEPT`, the first seen first.

    By closing time, not opening: a return that closes is kept for the next `CLOSED_KEPT`
    closings, however long it was open, so its own late events still find it. The last return
    (the profile's `returns_last_*`) is never settled.
    """
    if len(state.returns) <= CLOSED_KEPT:
        return state
    closed = [record for record in state.returns.values() if record.counted and not record.active]
    uncounted = [record for record in state.returns.values() if not record.counted]
    if len(closed) <= CLOSED_KEPT and len(uncounted) <= UNCOUNTED_KEPT:
        return state
    last = state.last_return
    closed.sort(key=lambda record: (record.status_at or _NO_TIME, record.return_id))
    settling = [record for record in closed[: max(0, len(closed) - CLOSED_KEPT)] if record is not last]
    dropped = uncounted[: max(0, len(uncounted) - UNCOUNTED_KEPT)]
    gone = {record.return_id for record in (*settling, *dropped)}
    settled_returns, skus = state.settled_returns, state.settled_skus
    for record in sorted(settling, key=lambda record: (record.opened_at or _NO_TIME, record.return_id)):
        # Least recently opened first, so the most recently opened one's SKUs end up in front.
        settled_returns = digests.added(settled_returns, digests.digest(record.return_id))
        skus = tuple(dict.fromkeys((*record.skus, *skus)))[:RETURNED_SKUS_LIMIT]
    return replace(
        state,
        returns={key: record for key, record in state.returns.items() if key not in gone},
        settled_returns=settled_returns,
        settled_skus=skus,
    )
