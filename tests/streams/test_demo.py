"""Demo traffic: the returns-per-customer knob, the streaming form matching the list form, and a
serial returner's long history."""

from __future__ import annotations

import itertools
from collections import Counter
from datetime import UTC, timedelta

import orjson
import pytest

from streams.codec import encode_event
from streams.demo import EPOCH, demo_customers, demo_events, serial_returner_events
from streams.events import EventType, ReturnEvent, event_from_dict
from streams.reducer import reduce_events


def test_demo_customers_are_demo_events_before_interleaving() -> None:
    streamed = [event for customer in demo_customers(80, seed=5) for event in customer]
    streamed.sort(key=lambda event: (event.occurred_at, event.event_id))
    assert streamed == demo_events(80, seed=5)


def test_fewer_returns_per_customer_keep_whole_lifecycles() -> None:
    default, single = demo_events(400, seed=3), demo_events(400, seed=3, returns_weights=(1, 0, 0, 0))
    assert len(single) < len(default)
    returns = Counter(event.customer_key for event in single if event.type is EventType.RETURN_REQUESTED)
    assert len(returns) == 400 and set(returns.values()) == {1}
    kinds = Counter(event.type for event in single)
    for ending in (EventType.REFUND_ISSUED, EventType.EXCHANGE_CREATED, EventType.STORE_CREDIT_ISSUED,
                   EventType.STORE_CREDIT_REDEEMED, EventType.RETURN_CLOSED):
        assert kinds[ending] > 0


def test_returns_weights_need_one_weight_per_count() -> None:
    with pytest.raises(ValueError, match="4 weights"):
        demo_events(3, returns_weights=(1, 1))


# ---------------------------------------------------------------------------------------------
# serial_returner_events: one customer's long history, as delivered.

EMAIL = "sam.returner@returnsync-demo.com"


@pytest.mark.parametrize("count", [0, 1, 10, 1000, 3000])
def test_serial_history_has_exactly_the_events_asked_for(count: int) -> None:
    assert len(serial_returner_events(EMAIL, count, seed=1)) == count


def test_serial_history_is_deterministic_per_seed() -> None:
    assert serial_returner_events(EMAIL, 800, seed=4) == serial_returner_events(EMAIL, 800, seed=4)
    assert serial_returner_events(EMAIL, 800, seed=4) != serial_returner_events(EMAIL, 800, seed=5)


def test_serial_history_redelivers_true_duplicates_and_reorders() -> None:
    history = serial_returner_events(EMAIL, 3000, seed=3)
    ids = Counter(event.event_id for event in history)
    duplicated = [event_id for event_id, seen in ids.items() if seen > 1]
    assert 30 <= len(duplicated) <= 200  # about 3% of 3000
    by_id: dict[str, ReturnEvent] = {}
    for event in history:
        assert by_id.setdefault(event.event_id, event) == event  # same id, same content
    in_time = sorted(history, key=lambda event: (event.occurred_at, event.event_id))
    assert history != in_time
    late = sum(1 for before, after in itertools.pairwise(history) if after.occurred_at < before.occurred_at)
    assert late > 30


def test_serial_history_is_hundreds_of_whole_lifecycles_over_years() -> None:
    history = serial_returner_events(EMAIL, 3000, seed=6, years=3)
    assert {event.customer_key for event in history} == {f"default/{EMAIL}"}
    kinds = Counter(event.type for event in history)
    assert 400 <= kinds[EventType.RETURN_REQUESTED] <= 800
    for kind in (EventType.RETURN_APPROVED, EventType.RETURN_IN_TRANSIT, EventType.RETURN_RECEIVED,
                 EventType.RETURN_CLOSED, EventType.REFUND_ISSUED, EventType.EXCHANGE_CREATED,
                 EventType.STORE_CREDIT_ISSUED, EventType.STORE_CREDIT_REDEEMED,
                 EventType.RETURN_CANCELLED, EventType.RETURN_REJECTED, EventType.ITEM_RESTOCKED):
        assert kinds[kind] > 0, kind
    times = [event.occurred_at for event in history]
    assert timedelta(days=2.5 * 365) < max(times) - min(times) < timedelta(days=3.2 * 365)
    assert max(times) <= EPOCH + timedelta(days=60)


def test_serial_history_events_are_valid_on_the_wire() -> None:
    for event in serial_returner_events(EMAIL, 2000, seed=8, tenant="shop-eu"):
        assert event_from_dict(orjson.loads(encode_event(event))) == event
        assert event.tenant == "shop-eu" and event.occurred_at.tzinfo is UTC


def test_serial_history_folds_without_error_and_dedups() -> None:
    history = serial_returner_events(EMAIL, 1500, seed=9)
    state = reduce_events(history)
    assert state is not None
    assert state.version == len({event.event_id for event in history})


def test_serial_history_refuses_a_negative_count() -> None:
    with pytest.raises(ValueError, match=">= 0"):
        serial_returner_events(EMAIL, -1)
