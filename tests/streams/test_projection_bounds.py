"""The projection's bounds (issue 10): whatever a customer's history holds, what is sent to
Klaviyo fits its limits, checked with the sandbox's own rules on the real request bodies."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.klaviyo.bodies import encode, event_body, profile_import_body
from klaviyo_sandbox import rules
from streams.events import Customer, EventType, ReturnEvent, ReturnItem
from streams.projection import (
    MAX_ITEM_EVENTS,
    MAX_LISTED_ITEMS,
    MAX_LISTED_SKUS,
    MAX_PROFILE_SKU_BYTES,
    MAX_PROFILE_SKUS,
    MAX_TEXT,
    ProjectionConfig,
    active_skus,
    klaviyo_events,
    profile_properties,
    profile_update,
)
from streams.reducer import reduce_events
from streams.state import CustomerState, Identity, ReturnRecord

CONFIG = ProjectionConfig()
AT = datetime(2025, 6, 1, 9, 0, tzinfo=UTC)
PROFILE_BYTES = 100_000  # Klaviyo: 100 KB per profile body (decimal, the stricter reading)
EVENT_BUDGET = 512 * 1024
"""Our own ceiling for one event's body: a tenth of Klaviyo's 5 MB, so a bulk request of many
such events can still be split into sane sizes."""


def requested(items: list[ReturnItem], *, email: str = "emma@shop.example.com", **fields: Any) -> ReturnEvent:
    return ReturnEvent(event_id=fields.pop("event_id", "evt-1"), type=EventType.RETURN_REQUESTED,
                       occurred_at=AT, customer=Customer(email=email, **fields.pop("customer", {})),
                       return_id=fields.pop("return_id", "R-1"), items=tuple(items), **fields)


def state_with(returns: list[tuple[str, list[str]]], **identity: Any) -> CustomerState:
    """Active returns, opened a day apart in the order given."""
    records = {
        return_id: ReturnRecord(return_id=return_id, status="requested", opened_at=AT + timedelta(days=day),
                                status_version=(AT + timedelta(days=day), 0, f"e-{return_id}"),
                                skus=tuple(skus), item_count=len(skus))
        for day, (return_id, skus) in enumerate(returns)
    }
    return CustomerState(customer_key="default/emma@shop.example.com",
                         identity=Identity(email="emma@shop.example.com", **identity),
                         returns=records, return_count=len(records))


def body_size(body: dict[str, Any]) -> int:
    return len(encode(body))


def sandbox_violations(event_attributes: dict[str, Any]) -> list[Any]:
    return [*rules.event_attributes(event_attributes, "", AT), *rules.long_strings(event_attributes)]


# --- the reported case: one event with 20,000 items -------------------------------------------


def test_twenty_thousand_items_keep_the_profile_far_under_100_kb() -> None:
    items = [ReturnItem(sku=f"SKU-{n:05d}-{'X' * 30}", product_name=f"Product {n}") for n in range(20_000)]
    state = reduce_events([requested(items)])
    assert state is not None
    update = profile_update(state, CONFIG)
    skus = update.properties["returns_active_skus"]
    assert 0 < len(skus) <= MAX_PROFILE_SKUS
    assert sum(len(sku.encode()) for sku in skus) <= MAX_PROFILE_SKU_BYTES
    assert body_size(profile_import_body(update)) < PROFILE_BYTES // 5
    assert update.properties["returns_active"] is True


def test_twenty_thousand_items_give_bounded_events_that_say_how_many_there_were() -> None:
    items = [ReturnItem(sku=f"SKU-{n:05d}", product_name="P" * 10_000, reason="R" * 10_000, quantity=2)
             for n in range(20_000)]
    main, *per_item = klaviyo_events(requested(items), CONFIG)
    assert len(per_item) == MAX_ITEM_EVENTS
    assert [event.unique_id for event in per_item] == [f"evt-1:{n}" for n in range(MAX_ITEM_EVENTS)]
    assert per_item[0].properties["SKU"] == "SKU-00000", "the first items are the ones sent"
    assert len(main.properties["Items"]) == MAX_LISTED_ITEMS
    assert main.properties["SKUs"] == [f"SKU-{n:05d}" for n in range(MAX_LISTED_SKUS)]
    assert main.properties["ItemLines"] == 20_000
    assert main.properties["ItemCount"] == 40_000, "units still count every item"
    for event in [main, *per_item]:
        body = event_body(event)
        assert body_size(body) < EVENT_BUDGET
        assert sandbox_violations(body["data"]["attributes"]) == []


def test_a_return_within_the_bounds_is_sent_whole_without_item_lines() -> None:
    items = [ReturnItem(sku=f"S{n}") for n in range(MAX_LISTED_ITEMS)]
    main, *per_item = klaviyo_events(requested(items), CONFIG)
    assert len(per_item) == MAX_LISTED_ITEMS and len(main.properties["Items"]) == MAX_LISTED_ITEMS
    assert "ItemLines" not in main.properties
    main, *_ = klaviyo_events(requested([*items, ReturnItem(sku="one-more")]), CONFIG)
    assert main.properties["ItemLines"] == MAX_LISTED_ITEMS + 1


def test_items_and_skus_lists_are_capped_on_every_event_type() -> None:
    items = tuple(ReturnItem(sku=f"S{n}") for n in range(5_000))
    approved = ReturnEvent(event_id="e2", type=EventType.RETURN_APPROVED, occurred_at=AT,
                           customer=Customer(email="emma@shop.example.com"), return_id="R-1", items=items)
    (only,) = klaviyo_events(approved, CONFIG)
    assert len(only.properties["Items"]) == MAX_LISTED_ITEMS
    assert len(only.properties["SKUs"]) == MAX_LISTED_SKUS
    assert only.properties["ItemLines"] == 5_000


# --- which SKUs the profile keeps ---------------------------------------------------------------


def test_active_skus_keep_the_most_recent_returns_when_they_do_not_all_fit() -> None:
    old = [f"OLD-{n}" for n in range(MAX_PROFILE_SKUS)]
    state = state_with([("R-old", old), ("R-new", ["NEW-1", "NEW-2"])])
    skus = profile_properties(state, CONFIG)["returns_active_skus"]
    assert len(skus) == MAX_PROFILE_SKUS
    assert "NEW-1" in skus and "NEW-2" in skus, "the newest return's SKUs are never the ones dropped"
    assert skus[-2:] == ["NEW-1", "NEW-2"], "the list stays in return order, oldest first"
    assert skus[:-2] == old[:MAX_PROFILE_SKUS - 2]


def test_active_skus_within_the_bounds_are_all_kept_in_return_order() -> None:
    state = state_with([("A", ["TEE", "CAP"]), ("B", ["CAP", "SOCK"])])
    assert active_skus(state.active_returns) == ["TEE", "CAP", "SOCK"]


def test_active_skus_stop_at_the_byte_budget() -> None:
    long_skus = [f"{n:03d}" + "x" * (MAX_TEXT - 3) for n in range(MAX_PROFILE_SKUS)]
    skus = active_skus(state_with([("R", long_skus)]).active_returns)
    assert len(skus) == MAX_PROFILE_SKU_BYTES // MAX_TEXT
    assert sum(len(sku.encode()) for sku in skus) <= MAX_PROFILE_SKU_BYTES


# --- every text value -----------------------------------------------------------------------------


def test_long_text_is_cut_everywhere_it_is_sent() -> None:
    huge = "é" * 60_000  # 120 KB of UTF-8: over Klaviyo's string limit on its own
    item = ReturnItem(sku=huge, product_name=huge, variant_name=huge, reason=huge, reason_parent=huge,
                      outcome=huge, new_sku=huge)
    event = requested([item], order_ref=huge, status_raw=huge, new_order_ref=huge,
                      customer={"first_name": huge, "last_name": huge, "external_id": huge})
    for sent in klaviyo_events(event, CONFIG):
        for text in strings(sent.properties):
            assert len(text) <= MAX_TEXT
    state = reduce_events([event])
    assert state is not None
    update = profile_update(state, CONFIG)
    assert update.first_name == update.last_name == huge[:MAX_TEXT]
    assert update.external_id is None, "an over-long external id is left out, never cut into another one"
    assert all(len(text) <= MAX_TEXT for text in strings(dict(update.properties)))
    assert update.properties["returns_last_reason"] == huge[:MAX_TEXT]


def test_a_normal_external_id_is_sent_as_it_is() -> None:
    update = profile_update(state_with([("R", ["A"])], external_id="cust-9001"), CONFIG)
    assert update.external_id == "cust-9001"


def strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [text for item in value.values() for text in strings(item)]
    if isinstance(value, list | tuple):
        return [text for item in value for text in strings(item)]
    return []


# --- properties: no history breaks the bounds ---------------------------------------------------

# Long text made cheaply: a short piece repeated up to far past every limit.
long_text = st.builds(lambda piece, times: piece * times,
                      st.text(min_size=1, max_size=4), st.integers(min_value=1, max_value=40_000))
sku_lists = st.lists(st.one_of(long_text, st.text(min_size=1, max_size=12)), max_size=400)


@given(returns=st.lists(sku_lists, min_size=1, max_size=8), name=long_text)
@settings(max_examples=60, deadline=None)
def test_any_active_returns_give_a_profile_body_under_the_limit(returns: list[list[str]], name: str) -> None:
    state = state_with([(f"R{n}", skus) for n, skus in enumerate(returns)], first_name=name, last_name=name)
    update = profile_update(state, CONFIG)
    body = profile_import_body(update)
    assert body_size(body) < PROFILE_BYTES // 2
    assert list(rules.long_strings(body)) == []
    skus = update.properties["returns_active_skus"]
    assert len(skus) <= MAX_PROFILE_SKUS and len(set(skus)) == len(skus)
    assert sum(len(sku.encode()) for sku in skus) <= MAX_PROFILE_SKU_BYTES
    newest = [sku[:MAX_TEXT] for sku in returns[-1]][:1]
    assert all(sku in skus for sku in newest if len(sku.encode()) <= MAX_PROFILE_SKU_BYTES)


items_strategy = st.lists(
    st.builds(ReturnItem, sku=st.one_of(st.none(), long_text), product_name=st.one_of(st.none(), long_text),
              reason=st.one_of(st.none(), long_text), quantity=st.integers(min_value=1, max_value=1_000_000)),
    max_size=300,
)


@given(items=items_strategy, ref=long_text)
@settings(max_examples=40, deadline=None)
def test_any_requested_event_gives_bounded_event_bodies(items: list[ReturnItem], ref: str) -> None:
    events = klaviyo_events(requested(items, order_ref=ref, status_raw=ref), CONFIG)
    assert len(events) == 1 + min(len(items), MAX_ITEM_EVENTS)
    for event in events:
        body = event_body(event)
        assert body_size(body) < EVENT_BUDGET
        assert sandbox_violations(body["data"]["attributes"]) == []
    main = events[0]
    assert len(main.properties.get("Items", [])) == min(len(items), MAX_LISTED_ITEMS)
    assert ("ItemLines" in main.properties) == (len(items) > MAX_LISTED_ITEMS)
    orjson.dumps(main.properties, default=str)  # encodable as it stands
