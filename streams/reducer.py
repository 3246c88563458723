"""The reducer (SPEC §4): `apply_event(state, event)`, one small rule per event type.

Properties the rules keep, and the hypothesis tests check:
- an event id already applied changes nothing (idempotency);
- a return's status is the one of its greatest (occurred_at, rank, event id): any delivery order
  of the same status events ends on the same status, and an older one never moves it back;
- money facts are sums over distinct fact ids, so their order does not matter;
- a status event for a status the return already has is a repeat: recorded, never announced again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from streams.events import EventType, Outcome, ReturnEvent
from streams.state import STATUS_RANK, CustomerState, Identity, ReturnRecord, Stamp

APPLIED_IDS_LIMIT = 1000
"""Event ids remembered per customer for deduplication. Money facts tied to a return are also
deduplicated by the ids kept on that return, which are never forgotten while the return is kept."""
RETURNS_LIMIT = 500
"""Return records kept per customer; beyond it the oldest closed returns are forgotten."""
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


def apply_event(state: CustomerState | None, event: ReturnEvent) -> Result:
    """Apply one event. `state` None means the customer has no state yet."""
    current = state if state is not None else initial_state(event)
    if event.event_id in current.applied_ids or _seen_on_return(current, event):
        return Result(current, Applied.DUPLICATE)
    rule = RULES[event.type]
    updated, applied = rule(current, event)
    updated = replace(
        updated,
        identity=_identity(updated.identity, event),
        applied_ids=(*updated.applied_ids, event.event_id)[-APPLIED_IDS_LIMIT:],
        version=updated.version + 1,
    )
    return Result(_pruned(updated), applied)


def reduce_events(events: Iterable[ReturnEvent], state: CustomerState | None = None) -> CustomerState | None:
    for event in events:
        state = apply_event(state, event).state
    return state


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
    state = _record_fact(state, event, Outcome.REFUND)
    return replace(state, refund_total=state.refund_total + _amount(event)), Applied.APPLIED


def _exchange_created(state: CustomerState, event: ReturnEvent) -> tuple[CustomerState, Applied]:
    state = _record_fact(state, event, Outcome.EXCHANGE)
    return replace(state, exchange_count=state.exchange_count + 1), Applied.APPLIED


def _store_credit_issued(state: CustomerState, event: ReturnEvent) -> tuple[CustomerState, Applied]:
    state = _record_fact(state, event, Outcome.STORE_CREDIT)
    total = state.store_credit_issued_total + _amount(event)
    return replace(state, store_credit_issued_total=total), Applied.APPLIED


def _store_credit_redeemed(state: CustomerState, event: ReturnEvent) -> tuple[CustomerState, Applied]:
    total = state.store_credit_redeemed_total + _amount(event)
    return replace(state, store_credit_redeemed_total=total), Applied.APPLIED


def _item_restocked(state: CustomerState, event: ReturnEvent) -> tuple[CustomerState, Applied]:
    # A warehouse fact: it changes nothing the customer sees, but it is recorded as applied.
    return state, Applied.APPLIED


RULES: dict[EventType, Rule] = {
    **{event_type: _status_changed for event_type in EventType if event_type.is_status},
    EventType.REFUND_ISSUED: _refund_issued,
    EventType.EXCHANGE_CREATED: _exchange_created,
    EventType.STORE_CREDIT_ISSUED: _store_credit_issued,
    EventType.STORE_CREDIT_REDEEMED: _store_credit_redeemed,
    EventType.ITEM_RESTOCKED: _item_restocked,
}


# ---------------------------------------------------------------------------------------------
# Helpers shared by the rules.


def _seen_on_return(state: CustomerState, event: ReturnEvent) -> bool:
    record = state.returns.get(event.return_id) if event.return_id else None
    return record is not None and event.event_id in record.fact_ids


def _amount(event: ReturnEvent) -> Decimal:
    return event.amount if event.amount is not None else Decimal(0)


def _record_fact(state: CustomerState, event: ReturnEvent, outcome: Outcome) -> CustomerState:
    """Tie a money fact to its return (for the outcome and for permanent dedup), if it has one."""
    if not event.return_id:
        return state
    previous = state.returns.get(event.return_id)
    record = previous or ReturnRecord(return_id=event.return_id)
    record = replace(record, fact_ids=record.fact_ids | {event.event_id})
    record = _with_outcome(_with_details(record, event), outcome)
    return _with_record(state, record, previous)


def _with_outcome(record: ReturnRecord, outcome: Outcome | None) -> ReturnRecord:
    if outcome is None:
        return record
    return replace(record, outcomes=record.outcomes | {outcome.value})


def _with_details(record: ReturnRecord, event: ReturnEvent) -> ReturnRecord:
    """Items, value, order and reason each come from the newest event that carries them.

    Each detail has its own stamp: with one stamp for all, an older event carrying the items was
    ignored when a newer one carrying only a value had arrived first.
    """
    details: dict[str, Any] = {"order_ref": event.order_ref}
    if event.type.is_status:
        item_value = sum((item.value * item.quantity for item in event.items if item.value), Decimal(0))
        reasons = (item.reason or item.reason_parent for item in event.items)
        details["items"] = event.items or None
        details["reason"] = next((reason for reason in reasons if reason), None)
        details["value"] = event.amount if event.amount is not None else (item_value or None)
    newer, stamps = _newer_fields(details, record.details_version, event)
    if "items" in newer:
        items = newer.pop("items")
        newer["skus"] = tuple(dict.fromkeys(item.sku for item in items if item.sku))
        newer["item_count"] = sum(item.quantity for item in items)
    return replace(record, **newer, details_version=stamps) if newer else record


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


def _pruned(state: CustomerState) -> CustomerState:
    """Forget the oldest closed returns first, then returns only money facts were seen for
    (those have no time to sort by)."""
    if len(state.returns) <= RETURNS_LIMIT:
        return state
    inactive = sorted(
        (record for record in state.returns.values() if not record.active),
        key=lambda record: (not record.counted, record.opened_at or _NO_TIME, record.return_id),
    )
    excess = {record.return_id for record in inactive[: len(state.returns) - RETURNS_LIMIT]}
    return replace(state, returns={k: v for k, v in state.returns.items() if k not in excess})
