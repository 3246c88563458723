"""Properties of the reducer over realistic generated streams (SPEC §4), checked with hypothesis.

Delivery in returns.events is at-least-once and producers can be late, so the reducer must give
the same answer for any delivery order of the same facts, with duplicates anywhere, and a replay
must give the state live processing gave. An independent model of SPEC §4 (`expected`) checks
that the answer is also the right one, not only a stable one.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.events import EventType, ReturnEvent
from streams.projection import ProjectionConfig, profile_properties
from streams.reducer import Applied, apply_event, reduce_events
from streams.state import ACTIVE_STATUSES, STATUS_RANK, CustomerState, state_from_dict, state_to_dict
from tests.streams.strategies import customer_streams, event_streams

CONFIG = ProjectionConfig()
EXAMPLES = settings(max_examples=100, deadline=None)


def reduce(events: list[ReturnEvent]) -> CustomerState:
    state = reduce_events(events)
    assert state is not None
    return state


def canonical(state: CustomerState) -> CustomerState:
    """The state without what delivery order legitimately changes: which of a return's
    same-status snapshots came first (the others are its repeats)."""
    returns = {key: replace(record, repeated_ids=frozenset()) for key, record in state.returns.items()}
    return replace(state, returns=returns)


@dataclass(frozen=True)
class Model:
    statuses: dict[str, str]
    return_count: int
    item_count: int
    refund_total: Decimal
    exchange_count: int
    store_credit_issued_total: Decimal
    store_credit_balance: Decimal
    first_return_at: datetime | None
    outcomes: dict[str, str | None]


def expected(events: list[ReturnEvent]) -> Model:
    """SPEC §4 written as set arithmetic over the distinct facts, with no reducer code in it."""
    facts = {event.event_id: event for event in events}.values()
    status_events = [event for event in facts if event.type.is_status]
    by_return: dict[str, list[ReturnEvent]] = defaultdict(list)
    for event in status_events:
        assert event.return_id is not None
        by_return[event.return_id].append(event)
    statuses = {
        return_id: max(
            group, key=lambda e: (e.occurred_at, STATUS_RANK[e.type.status], e.event_id)
        ).type.status
        for return_id, group in by_return.items()
    }
    item_count = 0
    for group in by_return.values():
        with_items = [event for event in group if event.items]
        if with_items:
            newest = max(with_items, key=lambda e: (e.occurred_at, e.event_id))
            item_count += sum(item.quantity for item in newest.items)

    def total(event_type: EventType) -> Decimal:
        return sum((e.amount or Decimal(0) for e in facts if e.type is event_type), Decimal(0))

    kinds = {
        EventType.REFUND_ISSUED: "refund",
        EventType.EXCHANGE_CREATED: "exchange",
        EventType.STORE_CREDIT_ISSUED: "store_credit",
    }
    union: dict[str, set[str]] = defaultdict(set)
    for event in facts:
        if event.return_id and event.type in kinds:
            union[event.return_id].add(kinds[event.type])
        if event.return_id and event.type.is_status and event.outcome:
            union[event.return_id].add(event.outcome.value)
    outcomes = {
        return_id: (
            None if not union[return_id] else "mixed" if len(union[return_id]) > 1 else min(union[return_id])
        )
        for return_id in statuses
    }
    issued = total(EventType.STORE_CREDIT_ISSUED)
    return Model(
        statuses=statuses,
        return_count=len(by_return),
        item_count=item_count,
        refund_total=total(EventType.REFUND_ISSUED),
        exchange_count=sum(1 for e in facts if e.type is EventType.EXCHANGE_CREATED),
        store_credit_issued_total=issued,
        store_credit_balance=max(Decimal(0), issued - total(EventType.STORE_CREDIT_REDEEMED)),
        first_return_at=min((e.occurred_at for e in status_events), default=None),
        outcomes=outcomes,
    )


def observed(state: CustomerState) -> Model:
    counted = {return_id: record for return_id, record in state.returns.items() if record.counted}
    return Model(
        statuses={return_id: record.status for return_id, record in counted.items() if record.status},
        return_count=state.return_count,
        item_count=state.item_count,
        refund_total=state.refund_total,
        exchange_count=state.exchange_count,
        store_credit_issued_total=state.store_credit_issued_total,
        store_credit_balance=state.store_credit_balance,
        first_return_at=state.first_return_at,
        outcomes={return_id: record.outcome for return_id, record in counted.items()},
    )


# --- the state is the right one -----------------------------------------------------------------


@EXAMPLES
@given(customer_streams())
def test_state_matches_the_spec_model(events: list[ReturnEvent]) -> None:
    state = reduce(events)
    assert observed(state) == expected(events)
    assert state.store_credit_balance >= 0
    active = {return_id for return_id, word in expected(events).statuses.items() if word in ACTIVE_STATUSES}
    assert {record.return_id for record in state.active_returns} == active
    properties = profile_properties(state, CONFIG)
    assert properties["returns_active"] is bool(active)
    assert properties["returns_active_count"] == len(active)
    assert properties["returns_serial_returner"] is (state.return_count >= 3)


# --- (a) duplicates never change state -------------------------------------------------------------


@EXAMPLES
@given(customer_streams(), st.data())
def test_applying_an_applied_event_again_is_a_duplicate(
    events: list[ReturnEvent], data: st.DataObject
) -> None:
    cut = data.draw(st.integers(min_value=1, max_value=len(events)), label="cut")
    state = reduce(events[:cut])
    for event in events[:cut]:
        result = apply_event(state, event)
        assert result.applied is Applied.DUPLICATE, event.event_id
        assert result.state == state


# --- (b) any delivery order of the same facts gives the same answer ---------------------------------


@EXAMPLES
@given(customer_streams(), st.data())
def test_any_permutation_gives_the_same_state(events: list[ReturnEvent], data: st.DataObject) -> None:
    shuffled = data.draw(st.permutations(events), label="delivery order")
    live, other = reduce(events), reduce(shuffled)
    assert observed(other) == observed(live)
    assert {k: r.status for k, r in other.returns.items()} == {k: r.status for k, r in live.returns.items()}
    assert profile_properties(other, CONFIG) == profile_properties(live, CONFIG)
    # Stronger than the list above: records, identity and counters are equal too.
    assert canonical(other) == canonical(live)


# --- (c) replay determinism ----------------------------------------------------------------------


@EXAMPLES
@given(customer_streams())
def test_replaying_the_same_sequence_gives_the_same_state(events: list[ReturnEvent]) -> None:
    assert reduce(events) == reduce(list(events))
    assert state_to_dict(reduce(events)) == state_to_dict(reduce(events))


@EXAMPLES
@given(customer_streams(), st.data())
def test_restoring_from_the_table_mid_stream_changes_nothing(
    events: list[ReturnEvent], data: st.DataObject
) -> None:
    # A worker restart restores the state from the changelog (bytes) and carries on.
    cut = data.draw(st.integers(min_value=0, max_value=len(events)), label="restart after")
    before = reduce_events(events[:cut])
    restored = state_from_dict(orjson.loads(orjson.dumps(state_to_dict(before)))) if before else None
    assert reduce_events(events[cut:], restored) == reduce(events)


@settings(max_examples=40, deadline=None)
@given(event_streams())
def test_each_customer_is_reduced_independently(events: list[ReturnEvent]) -> None:
    by_key: dict[str, list[ReturnEvent]] = defaultdict(list)
    for event in events:
        by_key[event.customer_key].append(event)
    assert len(by_key) >= 2
    for key, own in by_key.items():
        state = reduce(own)
        assert state.customer_key == key
        assert observed(state) == expected(own)


# --- (d) serialised form ---------------------------------------------------------------------------


@EXAMPLES
@given(customer_streams())
def test_state_round_trips_through_dict_and_orjson_bytes(events: list[ReturnEvent]) -> None:
    state: CustomerState | None = None
    for event in events:
        state = apply_event(state, event).state
        as_dict = state_to_dict(state)
        assert state_from_dict(as_dict) == state
        restored = state_from_dict(orjson.loads(orjson.dumps(as_dict)))
        assert restored == state
        assert state_to_dict(restored) == as_dict


# --- (e) duplicates interleaved anywhere, in any order -----------------------------------------


@EXAMPLES
@given(customer_streams(), st.data())
def test_duplicates_anywhere_in_any_order_converge(events: list[ReturnEvent], data: st.DataObject) -> None:
    again = data.draw(st.lists(st.sampled_from(events), max_size=2 * len(events)), label="redelivered")
    delivered = data.draw(st.permutations([*events, *again]), label="delivery order")
    state: CustomerState | None = None
    seen: set[str] = set()
    for event in delivered:
        result = apply_event(state, event)
        assert (result.applied is Applied.DUPLICATE) is (event.event_id in seen)
        seen.add(event.event_id)
        state = result.state
    assert state is not None
    assert canonical(state) == canonical(reduce(events))
    assert profile_properties(state, CONFIG) == profile_properties(reduce(events), CONFIG)
    assert state.version == len(events)
