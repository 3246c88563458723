"""The projection (SPEC §5): profile properties from state, Klaviyo events from applied events."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from streams.events import Customer, EventType, ReturnEvent, ReturnItem
from streams.projection import (
    DEFAULT_METRIC_NAMES,
    KlaviyoEvent,
    ProjectionConfig,
    klaviyo_events,
    profile_properties,
    profile_update,
)
from streams.reducer import reduce_events
from streams.state import CustomerState
from tests.streams.strategies import event, fixture_names, load_fixture

CONFIG = ProjectionConfig()
PROPERTY_TYPES: dict[str, Any] = {
    "returns_active": bool,
    "returns_active_count": int,
    "returns_active_skus": list,
    "returns_last_status": str,
    "returns_last_outcome": str,
    "returns_last_reason": str,
    "returns_last_at": str,
    "returns_count": int,
    "returns_items_count": int,
    "returns_refund_total": Decimal,
    "returns_exchange_count": int,
    "returns_store_credit_balance": Decimal,
    "returns_serial_returner": bool,
    "returns_first_return_at": str,
    "returns_orders_count": int,
    "returns_rate": Decimal,
    "returns_item_rate": Decimal,
    "returns_net_spend": Decimal,
}
RFC3339_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")
PASCAL = re.compile(r"^[A-Z][A-Za-z]*$")


def state_of(name: str) -> CustomerState:
    state = reduce_events(load_fixture(name))
    assert state is not None
    return state


def first(name: str, event_type: EventType) -> ReturnEvent:
    return next(item for item in load_fixture(name) if item.type is event_type)


# --- profile properties ----------------------------------------------------------------------


@pytest.mark.parametrize("name", fixture_names())
def test_every_property_is_always_present_with_its_type(name: str) -> None:
    properties = profile_properties(state_of(name), CONFIG)
    assert set(properties) == set(PROPERTY_TYPES)
    for key, value in properties.items():
        assert value is None or type(value) is PROPERTY_TYPES[key], key
        if key.endswith("_at") and value is not None:
            assert RFC3339_UTC.match(value), (key, value)


def test_properties_of_a_customer_with_an_open_return() -> None:
    assert profile_properties(state_of("serial_returner_active_return.jsonl"), CONFIG) == {
        "returns_active": True,
        "returns_active_count": 1,
        "returns_active_skus": ["DRESS-GRN-36", "TOP-WHT-S"],
        "returns_last_status": "in_transit",
        "returns_last_outcome": "refund",
        "returns_last_reason": "Too small",
        "returns_last_at": "2025-06-04T07:30:00Z",
        "returns_count": 4,
        "returns_items_count": 7,
        "returns_refund_total": Decimal("357.80"),
        "returns_exchange_count": 0,
        "returns_store_credit_balance": Decimal(0),
        "returns_serial_returner": True,
        "returns_first_return_at": "2025-01-05T09:00:00Z",
        # No order known: no count, rate or net spend rather than made-up ones.
        "returns_orders_count": None,
        "returns_rate": None,
        "returns_item_rate": None,
        "returns_net_spend": None,
    }


def test_properties_of_a_customer_with_store_credit() -> None:
    properties = profile_properties(state_of("store_credit_with_redemptions.jsonl"), CONFIG)
    assert properties["returns_active"] is False
    assert properties["returns_active_skus"] == []
    assert properties["returns_last_outcome"] == "store_credit"
    assert properties["returns_store_credit_balance"] == Decimal("25.00")
    assert properties["returns_serial_returner"] is False


def test_absent_values_are_none_so_a_stale_property_is_cleared() -> None:
    # Only a money fact seen so far: no counted return, so every "last" property is None.
    state = reduce_events([event("refund.issued", event_id="r1", return_id="R1", amount="5.00")])
    assert state is not None
    properties = profile_properties(state, CONFIG)
    for key in ("returns_last_status", "returns_last_outcome", "returns_last_reason", "returns_last_at",
                "returns_first_return_at"):  # fmt: skip
        assert key in properties and properties[key] is None, key
    assert properties["returns_count"] == 0
    assert properties["returns_refund_total"] == Decimal("5.00")
    assert properties["returns_active"] is False


def test_last_reason_none_when_the_return_has_none() -> None:
    state = reduce_events([event("return.requested", items=[{"sku": "A"}])])
    assert state is not None
    assert profile_properties(state, CONFIG)["returns_last_reason"] is None


def test_custom_prefix() -> None:
    config = ProjectionConfig(property_prefix="rs_")
    properties = profile_properties(state_of("refund_single_return.jsonl"), config)
    assert set(properties) == {"rs_" + key.removeprefix("returns_") for key in PROPERTY_TYPES}
    assert properties["rs_refund_total"] == Decimal("41.00")


@pytest.mark.parametrize(("threshold", "expected"), [(1, True), (3, True), (4, True), (5, False)])
def test_serial_returner_threshold_is_at_or_over(threshold: int, expected: bool) -> None:
    state = state_of("serial_returner_active_return.jsonl")  # 4 returns
    config = ProjectionConfig(serial_returner_threshold=threshold)
    assert profile_properties(state, config)["returns_serial_returner"] is expected


def test_default_serial_returner_threshold_is_three() -> None:
    assert CONFIG.serial_returner_threshold == 3
    events = load_fixture("cancelled_rejected_expired.jsonl")
    two_returns = reduce_events([item for item in events if item.return_id != "AS-3302"])
    assert two_returns is not None and two_returns.return_count == 2
    assert profile_properties(two_returns, CONFIG)["returns_serial_returner"] is False
    assert profile_properties(state_of("cancelled_rejected_expired.jsonl"), CONFIG)["returns_serial_returner"]


def test_active_skus_cover_every_open_return_once_and_no_closed_one() -> None:
    events = [
        event("return.requested", event_id="a", return_id="A", occurred_at="2025-03-01T09:00:00Z",
              items=[{"sku": "TEE"}, {"sku": "CAP"}]),
        event("return.approved", event_id="b", return_id="B", occurred_at="2025-03-02T09:00:00Z",
              items=[{"sku": "CAP"}, {"sku": "SOCK"}]),
        event("return.requested", event_id="c", return_id="C", occurred_at="2025-03-03T09:00:00Z",
              items=[{"sku": "JEANS"}]),
        event("return.closed", event_id="c2", return_id="C", occurred_at="2025-03-04T09:00:00Z"),
    ]  # fmt: skip
    state = reduce_events(events)
    assert state is not None
    properties = profile_properties(state, CONFIG)
    assert properties["returns_active_skus"] == ["TEE", "CAP", "SOCK"]
    assert properties["returns_active_count"] == 2
    assert properties["returns_last_status"] == "closed"


def test_profile_update_carries_identity() -> None:
    update = profile_update(state_of("refund_single_return.jsonl"), CONFIG)
    assert update.email == "emma.johnson@example.com"
    assert (update.external_id, update.first_name, update.last_name) == (
        "gid://shopify/Customer/7001",
        "Emma",
        "Johnson",
    )
    assert update.properties == profile_properties(state_of("refund_single_return.jsonl"), CONFIG)


def test_profile_update_never_carries_consent() -> None:
    update = profile_update(state_of("refund_single_return.jsonl"), CONFIG)
    text = repr(update).lower()
    for word in ("consent", "subscri", "suppress", "opt_in", "marketing"):
        assert word not in text


# --- Klaviyo events --------------------------------------------------------------------------


def test_default_metric_names_match_the_spec() -> None:
    assert {str(key): name for key, name in DEFAULT_METRIC_NAMES.items()} == {
        "return.requested": "Return Requested",
        "return.approved": "Return Approved",
        "return.rejected": "Return Rejected",
        "return.cancelled": "Return Cancelled",
        "return.expired": "Return Expired",
        "return.in_transit": "Return In Transit",
        "return.received": "Return Received",
        "return.closed": "Return Closed",
        "refund.issued": "Refund Issued",
        "exchange.created": "Exchange Created",
        "store_credit.issued": "Store Credit Issued",
        "store_credit.redeemed": "Store Credit Redeemed",
        "item": "Return Requested Item",
    }


@pytest.mark.parametrize("event_type", [t for t in EventType if t not in (EventType.ITEM_RESTOCKED,
                                                                           EventType.ORDER_PLACED)])
def test_every_type_but_restock_and_order_sends_its_metric(event_type: EventType) -> None:
    item = event(event_type.value, event_id="evt-9", return_id="R1")
    (sent,) = klaviyo_events(item, CONFIG)
    assert sent.metric == DEFAULT_METRIC_NAMES[event_type]
    assert sent.unique_id == "evt-9"


def test_item_restocked_sends_nothing() -> None:
    restock = first("store_credit_with_redemptions.jsonl", EventType.ITEM_RESTOCKED)
    assert klaviyo_events(restock, CONFIG) == []
    assert klaviyo_events(restock, CONFIG, backfill=True) == []


def test_requested_sends_the_return_event_and_one_per_item() -> None:
    requested = first("refund_single_return.jsonl", EventType.RETURN_REQUESTED)
    main, tee, socks = klaviyo_events(requested, CONFIG)
    assert main == KlaviyoEvent(
        email="emma.johnson@example.com",
        metric="Return Requested",
        unique_id="shopify:evt:5c1f0e2a-requested",
        time=datetime(2025, 3, 3, 10, 15, tzinfo=UTC),
        properties={
            "ReturnId": "1001",
            "OrderRef": "#1001",
            "Source": "shopify",
            "Tenant": "default",
            "Status": "requested",
            "StatusRaw": "requested",
            "Outcome": "refund",
            "Reason": "Too small",
            "ItemCount": 3,
            "SKUs": ["TEE-BLK-M", "SOCK-WHT-OS"],
            "Items": [
                {"SKU": "TEE-BLK-M", "ProductName": "Classic Tee", "VariantName": "Black / M",
                 "Quantity": 1, "Value": Decimal("28.00"), "Reason": "Too small", "ReasonParent": "Fit",
                 "Outcome": "refund"},
                {"SKU": "SOCK-WHT-OS", "ProductName": "Crew Socks", "VariantName": "White / One size",
                 "Quantity": 2, "Value": Decimal("6.50"), "Reason": "Changed my mind",
                 "ReasonParent": "Other", "Outcome": "refund"},
            ],
        },
        value=Decimal("41.00"),
        value_currency="USD",
        backfill=False,
    )  # fmt: skip
    assert (tee.metric, socks.metric) == ("Return Requested Item", "Return Requested Item")
    assert (tee.unique_id, socks.unique_id) == (f"{main.unique_id}:0", f"{main.unique_id}:1")
    assert tee.time == socks.time == main.time
    assert socks.value == Decimal("13.00"), "an item event's value is its line value: value x quantity"
    assert socks.value_currency == "USD"
    assert socks.properties == {
        "ReturnId": "1001",
        "OrderRef": "#1001",
        "Source": "shopify",
        "Tenant": "default",
        "Status": "requested",
        "StatusRaw": "requested",
        "SKU": "SOCK-WHT-OS",
        "ProductName": "Crew Socks",
        "VariantName": "White / One size",
        "Quantity": 2,
        "Value": Decimal("6.50"),
        "Reason": "Changed my mind",
        "ReasonParent": "Other",
        "Outcome": "refund",
    }


def test_item_events_only_for_requested() -> None:
    approved = first("exchange_single_return.jsonl", EventType.RETURN_APPROVED)
    assert approved.items
    (only,) = klaviyo_events(approved, CONFIG)
    assert only.metric == "Return Approved"
    assert only.properties["Items"][0]["NewSKU"] == "JEANS-30-30"


def test_item_event_without_value_has_no_money() -> None:
    requested = event("return.requested", event_id="e1", currency="USD", items=[{"sku": "A", "quantity": 2}])
    main, item = klaviyo_events(requested, CONFIG)
    assert main.value is None and main.value_currency is None
    assert item.value is None and item.value_currency is None
    assert item.unique_id == "e1:0"


def test_money_facts_carry_value_and_currency() -> None:
    refund = first("refund_single_return.jsonl", EventType.REFUND_ISSUED)
    (sent,) = klaviyo_events(refund, CONFIG)
    assert (sent.metric, sent.value, sent.value_currency) == ("Refund Issued", Decimal("41.00"), "USD")
    assert sent.time == refund.occurred_at
    redeemed = first("store_credit_with_redemptions.jsonl", EventType.STORE_CREDIT_REDEEMED)
    (sent,) = klaviyo_events(redeemed, CONFIG)
    assert (sent.metric, sent.value, sent.value_currency) == (
        "Store Credit Redeemed",
        Decimal("60.00"),
        "USD",
    )
    assert "ReturnId" not in sent.properties
    assert "Status" not in sent.properties


def test_no_money_means_no_value_and_no_currency() -> None:
    exchange = first("exchange_single_return.jsonl", EventType.EXCHANGE_CREATED)
    assert exchange.amount is None and exchange.currency == "USD"
    (sent,) = klaviyo_events(exchange, CONFIG)
    assert sent.value is None
    assert sent.value_currency is None
    assert sent.properties["NewOrderRef"] == "#EXC-58213"


def test_zero_amount_is_money() -> None:
    (sent,) = klaviyo_events(event("refund.issued", event_id="r0", amount="0", currency="EUR"), CONFIG)
    assert (sent.value, sent.value_currency) == (Decimal(0), "EUR")


@pytest.mark.parametrize("name", fixture_names())
def test_properties_are_pascal_case_without_empty_values(name: str) -> None:
    for item in load_fixture(name):
        for sent in klaviyo_events(item, CONFIG, backfill=True):
            assert sent.backfill is True
            assert sent.email == item.customer.email
            assert sent.unique_id.startswith(item.event_id)
            assert sent.time == item.occurred_at
            for key, value in _walk(sent.properties):
                assert PASCAL.match(key) or key in ("SKU", "SKUs", "NewSKU"), key
                assert value is not None and value != "", key


def _walk(properties: Any) -> list[tuple[str, Any]]:
    pairs = []
    for key, value in properties.items():
        pairs.append((key, value))
        if isinstance(value, list):
            for element in value:
                if isinstance(element, dict):
                    pairs += _walk(element)
    return pairs


def test_empty_and_none_values_are_left_out() -> None:
    bare = event("return.approved", event_id="e1", return_id="R1")
    (sent,) = klaviyo_events(bare, CONFIG)
    assert sent.properties == {"ReturnId": "R1", "Source": "api", "Tenant": "default", "Status": "approved"}


def test_empty_text_from_an_adapter_built_event_is_left_out() -> None:
    # Adapters build ReturnEvent directly, without the parser's trimming of "" to None.
    built = ReturnEvent(
        event_id="loop:return:1:open",
        type=EventType.RETURN_REQUESTED,
        occurred_at=datetime(2025, 3, 3, 10, 15, tzinfo=UTC),
        customer=Customer(email="a@b.co"),
        source="loop",
        return_id="1",
        order_ref="",
        status_raw="",
        items=(ReturnItem(sku="TEE", product_name="", reason="", variant_name=""),),
    )
    main, item = klaviyo_events(built, CONFIG)
    for sent in (main, item):
        assert "" not in [value for _, value in _walk(sent.properties)]
    assert main.properties == {
        "ReturnId": "1",
        "Source": "loop",
        "Tenant": "default",
        "Status": "requested",
        "ItemCount": 1,
        "SKUs": ["TEE"],
        "Items": [{"SKU": "TEE", "Quantity": 1}],
    }


def test_backfill_flag_is_carried_on_every_event() -> None:
    requested = first("refund_single_return.jsonl", EventType.RETURN_REQUESTED)
    assert [sent.backfill for sent in klaviyo_events(requested, CONFIG)] == [False, False, False]
    assert [sent.backfill for sent in klaviyo_events(requested, CONFIG, backfill=True)] == [True, True, True]


def test_metric_name_overrides() -> None:
    names = {**DEFAULT_METRIC_NAMES, "return.requested": "Retoure angemeldet", "item": "Retoure Artikel"}
    config = ProjectionConfig(metric_names=names)
    requested = first("refund_single_return.jsonl", EventType.RETURN_REQUESTED)
    metrics = [sent.metric for sent in klaviyo_events(requested, config)]
    assert metrics == ["Retoure angemeldet", "Retoure Artikel", "Retoure Artikel"]
    refund = first("refund_single_return.jsonl", EventType.REFUND_ISSUED)
    assert klaviyo_events(refund, config)[0].metric == "Refund Issued"


def test_projection_is_pure() -> None:
    state = state_of("mixed_refund_and_store_credit.jsonl")
    assert profile_properties(state, CONFIG) == profile_properties(state, CONFIG)
    requested = first("serial_returner_active_return.jsonl", EventType.RETURN_REQUESTED)
    assert klaviyo_events(requested, CONFIG) == klaviyo_events(requested, CONFIG)


# --- orders: rate, item rate, net spend ------------------------------------------------------------


def order(ref: str, amount: str = "50.00", currency: str = "USD", items: int = 2) -> ReturnEvent:
    return event("order.placed", event_id=f"api:order:{ref}", order_ref=ref, amount=amount, currency=currency,
                 item_count=items)


def test_order_properties_of_a_customer_with_orders_and_a_return() -> None:
    properties = profile_properties(state_of("orders_with_a_return.jsonl"), CONFIG)
    # 3 orders (#2002 re-sent under another id, #2001 delivered twice), 8 units, 243.50 USD;
    # 1 return of 2 units, refunded 56.00.
    assert {key: properties[key] for key in ("returns_orders_count", "returns_rate", "returns_item_rate",
                                             "returns_net_spend", "returns_count")} == {
        "returns_orders_count": 3,
        "returns_rate": Decimal("0.3333"),
        "returns_item_rate": Decimal("0.2500"),
        "returns_net_spend": Decimal("187.50"),
        "returns_count": 1,
    }


def test_rates_are_rounded_half_even_to_four_places() -> None:
    tie = reduce_events([order("#1", items=32), event("return.requested", items=[{"sku": "A"}])])
    assert tie is not None
    assert profile_properties(tie, CONFIG)["returns_item_rate"] == Decimal("0.0312")  # 1/32 = 0.03125
    two_of_three = reduce_events([order("#1"), order("#2"), order("#3"),
                                  event("return.requested", return_id="R1", event_id="r1"),
                                  event("return.requested", return_id="R2", event_id="r2")])
    assert two_of_three is not None
    assert profile_properties(two_of_three, CONFIG)["returns_rate"] == Decimal("0.6667")


def test_net_spend_only_in_one_currency() -> None:
    refund = event("refund.issued", event_id="rf1", return_id="R1", amount="20.00", currency="USD")
    no_currency = event("refund.issued", event_id="rf2", return_id="R1", amount="5.00")
    euro_refund = event("refund.issued", event_id="rf3", return_id="R1", amount="5.00", currency="EUR")

    def net(*events: ReturnEvent) -> Decimal | None:
        state = reduce_events(list(events))
        assert state is not None
        value: Decimal | None = profile_properties(state, CONFIG)["returns_net_spend"]
        return value

    assert net(order("#1"), order("#2", "30.00"), refund) == Decimal("60.00")
    assert net(order("#1"), refund, no_currency) == Decimal("25.00"), "no currency named: the store's"
    assert net(order("#1"), order("#2", currency="EUR")) is None, "never USD + EUR"
    assert net(order("#1"), euro_refund) is None, "never USD - EUR"
    assert net(order("#1", currency="EUR"), euro_refund) == Decimal("45.00")
    assert net(refund) is None, "no order known: nothing to subtract from"
    assert net(order("#1", "10.00"), refund) == Decimal("-10.00"), "refunds of orders never seen show"


def test_an_order_sends_no_klaviyo_event_whatever_the_metric_names() -> None:
    placed = first("orders_with_a_return.jsonl", EventType.ORDER_PLACED)
    assert klaviyo_events(placed, CONFIG) == []
    assert klaviyo_events(placed, CONFIG, backfill=True) == []
    named = ProjectionConfig(metric_names={**DEFAULT_METRIC_NAMES, EventType.ORDER_PLACED: "Placed Order"})
    assert klaviyo_events(placed, named) == []


@pytest.mark.parametrize(("orders", "returns", "expected"), [
    (4, 2, True),    # 0.5 of 4 orders, at the minimum
    (3, 2, False),   # 0.67 but under the 4-order minimum
    (5, 2, False),   # 0.4 of 5
    (6, 3, True),    # at or over the rate: exact, not the rounded 0.5
])
def test_serial_returner_by_rate_needs_the_minimum_orders(orders: int, returns: int, expected: bool) -> None:
    events = [order(f"#{n}") for n in range(orders)]
    events += [event("return.requested", return_id=f"R{n}", event_id=f"r{n}") for n in range(returns)]
    state = reduce_events(events)
    assert state is not None
    config = ProjectionConfig(serial_returner_threshold=10, serial_returner_rate=Decimal("0.5"),
                              serial_returner_min_orders=4)
    assert profile_properties(state, config)["returns_serial_returner"] is expected
    by_count = ProjectionConfig(serial_returner_threshold=10)
    assert profile_properties(state, by_count)["returns_serial_returner"] is False
