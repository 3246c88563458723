"""The reducer over long histories: state stays bounded and stays exact (issue: a customer with
thousands of events, e.g. a placeholder email every POS order shares).

Beyond `CLOSED_KEPT` closed returns the oldest are settled. These properties check that settling
loses nothing the customer's profile shows: against the independent SPEC model of
`test_reducer_properties`, with redeliveries at any age and reordering as live traffic has it
(an event displaced by a few places; a settled return is final, so a displacement past
`CLOSED_KEPT` closings is not claimed exact).
"""

from __future__ import annotations

from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from streams import digests
from streams.codec import decode_state, encode_state
from streams.events import EventType, ReturnEvent
from streams.projection import ProjectionConfig, profile_properties
from streams.reducer import CLOSED_KEPT, Applied, apply_event, reduce_events
from streams.state import ACTIVE_STATUSES, CustomerState
from tests.streams.strategies import long_customer_streams
from tests.streams.test_reducer_properties import Model, expected

CONFIG = ProjectionConfig()
# Shrinking a history of hundreds of events takes minutes and says little more than the failure.
LONG = settings(max_examples=30, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate])
WINDOW = 4
"""Places an event may be displaced by: well under `CLOSED_KEPT` closings."""


def reduce(events: list[ReturnEvent]) -> CustomerState:
    state = reduce_events(events)
    assert state is not None
    return state


def lifetime(model: Model | CustomerState) -> tuple[object, ...]:
    return (model.return_count, model.item_count, model.refund_total, model.exchange_count,
            model.store_credit_issued_total, model.store_credit_balance, model.first_return_at,
            model.order_count, model.ordered_item_count, dict(model.order_totals), model.net_spend)


def check_exact(state: CustomerState, events: list[ReturnEvent]) -> None:
    truth = expected(events)
    assert lifetime(state) == lifetime(truth)
    active = {return_id for return_id, word in truth.statuses.items() if word in ACTIVE_STATUSES}
    assert {record.return_id for record in state.active_returns} == active
    for return_id, record in state.returns.items():
        if record.counted:
            assert record.status == truth.statuses[return_id], return_id
            assert record.outcome == truth.outcomes[return_id], return_id
    settled = truth.statuses.keys() - state.returns.keys()
    assert digests.count(state.settled_returns) == len(settled)
    # Orders are remembered as 8-byte digests of their refs, one each, and nothing else grows.
    assert digests.count(state.order_digests) == truth.order_count


def displaced(events: list[ReturnEvent], data: st.DataObject) -> list[ReturnEvent]:
    """`events` with each one moved by at most WINDOW places: sorted by position plus noise."""
    size = len(events)
    noise = data.draw(st.lists(st.integers(0, WINDOW), min_size=size, max_size=size), label="noise")
    return [event for _, event in sorted(enumerate(events), key=lambda pair: pair[0] + noise[pair[0]])]


@LONG
@given(long_customer_streams())
def test_a_long_history_in_time_order_is_exact_and_bounded(events: list[ReturnEvent]) -> None:
    state = reduce(events)
    check_exact(state, events)
    closed = [record for record in state.returns.values() if record.counted and not record.active]
    assert len(closed) <= CLOSED_KEPT


@LONG
@given(long_customer_streams(), st.data())
def test_reordering_and_redelivery_give_the_same_profile(
    events: list[ReturnEvent], data: st.DataObject
) -> None:
    again = data.draw(st.lists(st.sampled_from(events), max_size=len(events) // 2), label="redelivered")
    delivered = displaced([*events, *again], data)
    state = reduce(delivered)
    check_exact(state, events)
    assert profile_properties(state, CONFIG) == profile_properties(reduce(events), CONFIG)


@LONG
@given(long_customer_streams(), st.data())
def test_a_redelivery_at_any_age_changes_nothing(events: list[ReturnEvent], data: st.DataObject) -> None:
    state = reduce(events)
    for old in data.draw(st.lists(st.sampled_from(events), min_size=1, max_size=20), label="re-sent"):
        result = apply_event(state, old)
        assert result.state == state, old.event_id
        # A restock of a settled return is not remembered: applying it again is applying it once.
        restock = old.type is EventType.ITEM_RESTOCKED
        allowed = {Applied.DUPLICATE, Applied.OUT_OF_ORDER} | ({Applied.APPLIED} if restock else set())
        assert result.applied in allowed, old.event_id


@LONG
@given(long_customer_streams(), st.data())
def test_restoring_the_stored_form_mid_history_changes_nothing(
    events: list[ReturnEvent], data: st.DataObject
) -> None:
    cut = data.draw(st.integers(min_value=1, max_value=len(events)), label="restart after")
    restored = decode_state(encode_state(reduce(events[:cut])))
    assert reduce_events(events[cut:], restored) == reduce(events)
