"""Demo traffic: the returns-per-customer knob, and the streaming form matching the list form."""

from __future__ import annotations

from collections import Counter

import pytest

from streams.demo import demo_customers, demo_events
from streams.events import EventType


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
