"""Properties of the reducer over realistic generated streams (SPEC §4), checked with hypothesis.

Delivery in returns.events is at-least-once and producers can be late, so the reducer must give
the same answer for any delivery order of the same facts, with duplicates anywhere, and a replay
must give the state live processing gave. An independent model of SPEC §4 (`expected`) checks
that the answer is also the right one, not only a stable one. Orders (`order.placed`) ride in the
same streams: the model counts them as distinct order refs, and keeps the return facts apart
from them, so an order that opened, closed or counted a return would show.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal
from fractions import Fraction
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.codec import decode_state, encode_state
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
    order_count: int
    ordered_item_count: int
    order_totals: dict[str, Decimal]
    net_spend: Decimal | None


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
    orders = {e.order_ref: e for e in facts if e.type is EventType.ORDER_PLACED}.values()
    order_totals: dict[str, Decimal] = defaultdict(Decimal)
    for order in orders:
        assert order.currency is not None and order.amount is not None
        order_totals[order.currency] += order.amount
    refund_currencies = {e.currency for e in facts if e.type is EventType.REFUND_ISSUED and e.currency}
    single = set(order_totals) if len(order_totals) == 1 else None
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
        order_count=len(orders),
        ordered_item_count=sum(order.item_count or 0 for order in orders),
        order_totals=dict(order_totals),
        net_spend=(sum(order_totals.values(), Decimal(0)) - total(EventType.REFUND_ISSUED)
                   if single and refund_currencies <= single else None),
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
        order_count=state.order_count,
        ordered_item_count=state.ordered_item_count,
        order_totals=dict(state.order_totals),
        net_spend=state.net_spend,
    )


def rate(part: int, whole: int) -> Fraction | None:
    """The model's rate: exact, then to 4 places half-even (Python's round on a Fraction)."""
    return round(Fraction(part, whole), 4) if whole else None


def as_fraction(value: Any) -> Fraction | None:
    return None if value is None else Fraction(value)


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
    model = expected(events)
    assert properties["returns_orders_count"] == (model.order_count or None)
    assert as_fraction(properties["returns_rate"]) == rate(model.return_count, model.order_count)
    assert as_fraction(properties["returns_item_rate"]) == rate(model.item_count, model.ordered_item_count)
    assert properties["returns_net_spend"] == model.net_spend


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


# --- (f) orders: the return rate over orders and returns in any order --------------------------


def orders_of(events: list[ReturnEvent]) -> list[ReturnEvent]:
    return [event for event in events if event.type is EventType.ORDER_PLACED]


def order_properties(state: CustomerState, config: ProjectionConfig = CONFIG) -> dict[str, Any]:
    names = ("orders_count", "rate", "item_rate", "net_spend", "serial_returner", "count", "items_count")
    properties = profile_properties(state, config)
    return {name: properties[f"returns_{name}"] for name in names}


@EXAMPLES
@given(customer_streams(), st.data())
def test_orders_and_returns_in_any_order_with_re_sends_give_the_same_rate(
    events: list[ReturnEvent], data: st.DataObject
) -> None:
    orders = orders_of(events)
    # A producer re-sending an order under a new id is still one order (known by its order_ref).
    picked = data.draw(st.lists(st.sampled_from(orders), max_size=4), label="re-sent") if orders else []
    resent = [replace(order, event_id=f"{order.event_id}:resent") for order in picked]
    again = data.draw(st.lists(st.sampled_from(events), max_size=len(events)), label="redelivered")
    delivered = data.draw(st.permutations([*events, *resent, *again]), label="delivery order")
    state = reduce(delivered)
    truth = expected(events)
    assert state.order_count == truth.order_count == len({order.order_ref for order in orders})
    assert order_properties(state) == order_properties(reduce(events))
    assert as_fraction(order_properties(state)["rate"]) == rate(truth.return_count, truth.order_count)
    assert state.version == len(events), "a re-sent order applies nothing"


@EXAMPLES
@given(customer_streams(), st.data())
def test_a_replay_through_the_stored_bytes_gives_the_same_rate(
    events: list[ReturnEvent], data: st.DataObject
) -> None:
    # The table holds format-3 bytes (order digests after the others): a restart mid-stream and a
    # replay from the start must agree on every order property.
    cut = data.draw(st.integers(min_value=0, max_value=len(events)), label="restart after")
    before = reduce_events(events[:cut])
    restored = decode_state(encode_state(before)) if before is not None else None
    assert restored == before
    resumed = reduce_events(events[cut:], restored)
    assert resumed is not None
    assert resumed == reduce(events) == reduce(list(events))
    assert order_properties(resumed) == order_properties(reduce(events))


@EXAMPLES
@given(customer_streams())
def test_orders_never_open_close_or_count_a_return(events: list[ReturnEvent]) -> None:
    with_orders = reduce(events)
    returns_only = reduce_events([event for event in events if event.type is not EventType.ORDER_PLACED])
    if returns_only is None:  # orders only: no return anywhere
        assert (with_orders.returns, with_orders.return_count, with_orders.item_count) == ({}, 0, 0)
        return
    assert with_orders.returns == returns_only.returns
    assert lifetime_of_returns(with_orders) == lifetime_of_returns(returns_only)
    assert returns_only.order_count == 0 and returns_only.order_digests == b""


def lifetime_of_returns(state: CustomerState) -> tuple[object, ...]:
    return (state.return_count, state.item_count, state.refund_total, state.exchange_count,
            state.store_credit_issued_total, state.store_credit_redeemed_total, state.first_return_at,
            state.fact_digests, state.settled_returns, state.settled_skus)


@EXAMPLES
@given(customer_streams())
def test_rates_are_absent_without_a_denominator_never_a_division_by_zero(events: list[ReturnEvent]) -> None:
    no_orders = reduce_events([event for event in events if event.type is not EventType.ORDER_PLACED])
    if no_orders is not None:
        properties = order_properties(no_orders)
        assert (properties["orders_count"], properties["rate"], properties["item_rate"]) == (None, None, None)
        assert properties["net_spend"] is None
    state = reduce(events)
    properties = order_properties(state)
    assert (properties["rate"] is None) is (state.order_count == 0)
    assert (properties["item_rate"] is None) is (state.ordered_item_count == 0)
    assert (properties["net_spend"] is None) is (expected(events).net_spend is None)


@EXAMPLES
@given(customer_streams(), st.sampled_from(["0.25", "0.5", "1"]), st.integers(min_value=1, max_value=4),
       st.integers(min_value=1, max_value=6))
def test_serial_returner_by_rate_is_the_rule_on_exact_counts(
    events: list[ReturnEvent], threshold_rate: str, min_orders: int, threshold: int
) -> None:
    config = ProjectionConfig(serial_returner_threshold=threshold, serial_returner_min_orders=min_orders,
                              serial_returner_rate=Decimal(threshold_rate))
    truth = expected(events)
    by_rate = (truth.order_count >= min_orders
               and Fraction(truth.return_count) >= Fraction(threshold_rate) * truth.order_count)
    serial = order_properties(reduce(events), config)["serial_returner"]
    assert serial is (truth.return_count >= threshold or by_rate)
    # Without a configured rate, only the count decides, as before orders existed.
    by_count = replace(config, serial_returner_rate=None)
    assert order_properties(reduce(events), by_count)["serial_returner"] is (truth.return_count >= threshold)
