"""The reducer (SPEC §4): `apply_event(state, event)`, one small rule per event type.

Properties the rules keep, and the hypothesis tests check:
- an event id already applied changes nothing (idempotency);
- a return's status is the one of its greatest (occurred_at, rank, event id): any delivery order
  of the same status events ends on the same status, and an older one never moves it back;
- money facts are sums over distinct fact ids, so their order does not matter.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from decimal import Decimal
from enum import StrEnum

from streams.events import EventType, Outcome, ReturnEvent
from streams.state import STATUS_RANK, CustomerState, Identity, ReturnRecord

APPLIED_IDS_LIMIT = 1000
"""Event ids remembered per customer for deduplication. Money facts tied to a return are also
deduplicated by the ids kept on that return, which are never forgotten while the return is kept."""
RETURNS_LIMIT = 500
"""Return records kept per customer; beyond it the oldest closed returns are forgotten."""


class Applied(StrEnum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"
    OUT_OF_ORDER = "out_of_order"
    """Recorded, but an older status than the one the return already has: status not moved."""


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
    opened_at = event.occurred_at if record.opened_at is None else min(record.opened_at, event.occurred_at)
    record = replace(record, opened_at=opened_at, fact_ids=record.fact_ids | {event.event_id})
    if newer:
        record = replace(record, status=status, status_version=version)
    record = _with_outcome(_with_details(record, event), event.outcome)
    first = opened_at if state.first_return_at is None else min(state.first_return_at, opened_at)
    state = replace(
        _with_record(state, record, state.returns.get(event.return_id)),
        return_count=state.return_count + (0 if was_counted else 1),
        first_return_at=first,
    )
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
    """Items, value, order and reason come from the newest event that carries them."""
    if not event.items and event.amount is None and event.order_ref is None:
        return record
    if record.order_ref is None and event.order_ref is not None:
        record = replace(record, order_ref=event.order_ref)
    if not event.type.is_status or not (event.items or event.amount is not None):
        return record
    version = (event.occurred_at, event.event_id)
    if record.details_version is not None and version <= record.details_version:
        return record
    skus = tuple(dict.fromkeys(item.sku for item in event.items if item.sku))
    reasons = [item.reason or item.reason_parent for item in event.items]
    item_value = sum((item.value * item.quantity for item in event.items if item.value), Decimal(0))
    return replace(
        record,
        order_ref=event.order_ref or record.order_ref,
        skus=skus or record.skus,
        item_count=sum(item.quantity for item in event.items) or record.item_count,
        value=event.amount if event.amount is not None else (item_value or record.value),
        reason=next((reason for reason in reasons if reason), record.reason),
        details_version=version,
    )


def _with_record(
    state: CustomerState, record: ReturnRecord, previous: ReturnRecord | None
) -> CustomerState:
    old_items = previous.item_count if previous is not None and previous.counted else 0
    new_items = record.item_count if record.counted else 0
    returns = {**state.returns, record.return_id: record}
    return replace(state, returns=returns, item_count=state.item_count + new_items - old_items)


def _identity(identity: Identity, event: ReturnEvent) -> Identity:
    customer = event.customer
    if not (customer.external_id or customer.first_name or customer.last_name):
        return identity
    version = (event.occurred_at, event.event_id)
    if identity.version is not None and version <= identity.version:
        return identity
    return Identity(
        email=identity.email,
        external_id=customer.external_id or identity.external_id,
        first_name=customer.first_name or identity.first_name,
        last_name=customer.last_name or identity.last_name,
        version=version,
    )


def _pruned(state: CustomerState) -> CustomerState:
    if len(state.returns) <= RETURNS_LIMIT:
        return state
    closed = sorted(
        (record for record in state.returns.values() if not record.active),
        key=lambda record: (record.opened_at or record.status_at, record.return_id),
    )
    excess = {record.return_id for record in closed[: len(state.returns) - RETURNS_LIMIT]}
    return replace(state, returns={k: v for k, v in state.returns.items() if k not in excess})
