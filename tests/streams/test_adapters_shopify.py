"""Shopify adapter and its order/customer join."""

from __future__ import annotations

import copy
import itertools
from decimal import Decimal
from typing import Any

import pytest

from streams.adapters import AwaitingOrderCustomer, Normalized, Skip, normalize, shopify
from streams.errors import Reason, RejectedInput
from streams.events import Customer, EventType, ReturnEvent
from streams.raw import RawWebhook
from streams.reducer import reduce_events
from tests.streams.adapter_support import (
    as_dicts,
    assert_golden,
    assert_round_trips,
    fixture_headers,
    fixture_json,
    fixture_names,
    raw,
    raw_fixture,
)

ORDER_KEY = "default/5196695273621"
SAM = Customer("sam.lee@example.com", "6612345678901", "Sam", "Lee")
RETURN_FLOW = ["returns_request", "returns_approve", "refunds_create", "returns_close", "returns_reopen"]


def _known(key: str) -> Customer | None:
    return SAM if key == ORDER_KEY else None


@pytest.mark.parametrize("name", fixture_names("shopify"))
def test_fixture_gives_exactly_the_expected_events(name: str) -> None:
    result = shopify.normalize(raw_fixture("shopify", name), _known)
    assert_golden("shopify", name, result)
    assert_round_trips(result.events)


@pytest.mark.parametrize("name", ["orders_create", "orders_updated"])
def test_order_webhooks_teach_the_customer_of_the_order(name: str) -> None:
    result = shopify.normalize(raw_fixture("shopify", name))
    assert result.order_customer == shopify.OrderCustomer(ORDER_KEY, SAM)
    assert (result.awaiting_order, result.skipped, result.unknown_status) == (None, None, None)


def test_orders_create_places_the_order_once_and_orders_updated_places_nothing() -> None:
    (placed,) = shopify.normalize(raw_fixture("shopify", "orders_create")).events
    assert placed.type is EventType.ORDER_PLACED
    assert (placed.event_id, placed.order_ref) == ("shopify:order:5196695273621", "#1106")
    assert placed.customer == SAM
    assert (placed.amount, placed.currency, placed.item_count) == (Decimal("123.12"), "USD", 2)
    assert placed.return_id is None and placed.items == ()
    # Shopify re-sends a webhook it thinks failed: the same id, so the same order.
    again = shopify.normalize(raw_fixture("shopify", "orders_create", **{"X-Shopify-Event-Id": "999"}))
    assert again.events == (placed,)
    assert shopify.normalize(raw_fixture("shopify", "orders_updated")).events == ()


def test_an_order_is_counted_in_the_money_the_customer_paid() -> None:
    body = fixture_json("shopify", "orders_create")
    body["total_price_set"]["presentment_money"] = {"amount": "112.40", "currency_code": "EUR"}
    (placed,) = shopify.normalize(raw("shopify", body, fixture_headers("shopify", "orders_create"))).events
    assert (placed.amount, placed.currency) == (Decimal("112.40"), "EUR")
    del body["total_price_set"]
    (placed,) = shopify.normalize(raw("shopify", body, fixture_headers("shopify", "orders_create"))).events
    assert (placed.amount, placed.currency) == (Decimal("123.12"), "USD")


@pytest.mark.parametrize("change", [
    {"total_price_set": None, "total_price": None},
    {"total_price_set": None, "currency": None},
    {"total_price_set": None, "total_price": "a lot"},
    {"line_items": [{"quantity": 0}]},
])
def test_an_order_that_cannot_be_counted_still_joins_its_returns(change: dict[str, Any]) -> None:
    body = {**fixture_json("shopify", "orders_create"), **change}
    result = shopify.normalize(raw("shopify", body, fixture_headers("shopify", "orders_create")))
    assert result == Normalized(order_customer=shopify.OrderCustomer(ORDER_KEY, SAM),
                                skipped=Skip.ORDER_NOT_COUNTED)


@pytest.mark.parametrize("name", [n for n in fixture_names("shopify") if not n.startswith("orders_")])
def test_return_webhooks_wait_for_the_order_customer(name: str) -> None:
    result = shopify.normalize(raw_fixture("shopify", name))
    assert result == Normalized(awaiting_order=ORDER_KEY)
    with pytest.raises(AwaitingOrderCustomer) as caught:
        shopify.to_events(raw_fixture("shopify", name))
    assert caught.value.order_key == ORDER_KEY
    assert caught.value.reason is Reason.MISSING_FIELD  # a caller that does not join dead-letters it


class JoiningCaller:
    """What the normalize agent does with the protocol, with dicts for its tables."""

    def __init__(self) -> None:
        self.customers: dict[str, Customer] = {}
        self.parked: dict[str, list[RawWebhook]] = {}
        self.emitted: list[ReturnEvent] = []

    def handle(self, webhook: RawWebhook) -> None:
        result = normalize(webhook, self.customers.get)
        if result.order_customer is not None:
            self.customers[result.order_customer.order_key] = result.order_customer.customer
            for parked in self.parked.pop(result.order_customer.order_key, []):
                self.handle(parked)
        if result.awaiting_order is not None:
            self.parked.setdefault(result.awaiting_order, []).append(webhook)
        self.emitted.extend(result.events)


def test_join_gives_the_same_events_whatever_the_arrival_order() -> None:
    names = ["orders_create", "returns_request", "returns_approve", "refunds_create", "returns_close"]
    outcomes = []
    for order in itertools.permutations(names):
        caller = JoiningCaller()
        for name in order:
            caller.handle(raw_fixture("shopify", name))
        assert not caller.parked
        outcomes.append(sorted(e.event_id for e in caller.emitted))
    assert all(outcome == outcomes[0] for outcome in outcomes)
    assert len(outcomes[0]) == 6  # order, request, approve, refund, close, exchange


def test_a_return_parked_before_any_order_webhook_is_released_by_orders_updated() -> None:
    # An app installed after checkout never sees orders/create: the next order edit teaches it.
    caller = JoiningCaller()
    for name in ["returns_request", "refunds_create", "orders_updated"]:
        caller.handle(raw_fixture("shopify", name))
    assert not caller.parked
    assert [e.type for e in caller.emitted] == [EventType.RETURN_REQUESTED, EventType.REFUND_ISSUED]
    assert {e.customer for e in caller.emitted} == {SAM}


def test_full_flow_through_the_reducer() -> None:
    caller = JoiningCaller()
    for name in [*RETURN_FLOW, "returns_decline", "returns_cancel", "orders_create", "refunds_create"]:
        caller.handle(raw_fixture("shopify", name))
    state = reduce_events(caller.emitted)
    assert state is not None
    assert {rid: record.status for rid, record in state.returns.items()} == {
        "3547267221": "approved",  # reopened after it was closed: the later event wins
        "3547299989": "rejected",
        "3547300001": "cancelled",
    }
    assert (state.refund_total, state.exchange_count) == (Decimal("41.04"), 1)
    assert state.identity.external_id == "6612345678901"
    # One order placed (its returns name it as "#1106-R<n>"), three returns of it.
    assert (state.order_count, state.ordered_item_count, state.return_count) == (1, 2, 3)
    assert state.net_spend == Decimal("123.12") - Decimal("41.04")


def test_event_id_falls_back_to_the_delivery_id_then_a_hash() -> None:
    headers = fixture_headers("shopify", "returns_approve")
    del headers["X-Shopify-Event-Id"]
    body = raw_fixture("shopify", "returns_approve").body
    event = shopify.to_events(raw("shopify", body, headers), SAM)[0]
    assert event.event_id == "shopify:webhook:0a1b2c3d-0000-4000-8000-000000000102"
    del headers["X-Shopify-Webhook-Id"]
    first, again = (shopify.to_events(raw("shopify", body, headers), SAM)[0].event_id for _ in range(2))
    assert first == again and first.startswith("shopify:")


def test_without_triggered_at_the_receipt_time_is_used() -> None:
    headers = fixture_headers("shopify", "returns_approve")
    del headers["X-Shopify-Triggered-At"]
    webhook = raw("shopify", raw_fixture("shopify", "returns_approve").body, headers)
    assert shopify.to_events(webhook, SAM)[0].occurred_at == webhook.received_at


def test_unknown_return_topic_maps_by_body_status_or_reports_it() -> None:
    headers = {**fixture_headers("shopify", "returns_approve"), "X-Shopify-Topic": "returns/process"}
    body = fixture_json("shopify", "returns_approve")
    result = shopify.normalize(raw("shopify", body, headers), _known)
    assert (result.unknown_status, result.events[0].type) == (None, EventType.RETURN_APPROVED)
    body["status"] = "processing"
    result = shopify.normalize(raw("shopify", body, headers), _known)
    assert (result.unknown_status, result.events) == ("processing", ())


def test_refund_outside_any_return_is_skipped_before_any_lookup() -> None:
    body = fixture_json("shopify", "refunds_create")
    body["return"] = None
    result = shopify.normalize(raw("shopify", body, fixture_headers("shopify", "refunds_create")))
    assert result == Normalized(skipped=Skip.NOT_A_RETURN)


def test_restock_only_refund_moves_no_money() -> None:
    body = fixture_json("shopify", "refunds_create")
    body["transactions"] = []
    result = shopify.normalize(raw("shopify", body, fixture_headers("shopify", "refunds_create")), _known)
    assert result == Normalized(skipped=Skip.NO_CHANGE)


def test_only_successful_refund_transactions_count() -> None:
    event = shopify.to_events(raw_fixture("shopify", "refunds_create"), SAM)[0]
    assert (event.amount, event.currency) == (Decimal("41.04"), "USD")


def test_order_without_email_cannot_join() -> None:
    body = fixture_json("shopify", "orders_create")
    body.update(email=None, contact_email=None, customer=None)
    result = shopify.normalize(raw("shopify", body, fixture_headers("shopify", "orders_create")))
    assert result == Normalized(skipped=Skip.NO_CUSTOMER)


def test_order_keys_are_per_tenant() -> None:
    webhook = raw_fixture("shopify", "orders_create", **{"X-ReturnSync-Tenant": "brand-eu"})
    result = shopify.normalize(webhook)
    assert result.order_customer is not None and result.order_customer.order_key == "brand-eu/5196695273621"


def test_returns_name_gives_the_order_ref_only_when_it_has_the_shopify_shape() -> None:
    body = fixture_json("shopify", "returns_approve")
    body["name"] = "RMA-77"
    headers = fixture_headers("shopify", "returns_approve")
    assert shopify.to_events(raw("shopify", body, headers), SAM)[0].order_ref is None


def _headers(name: str, **changes: str) -> dict[str, str]:
    return {**fixture_headers("shopify", name), **changes}


def _body(name: str, **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = copy.deepcopy(fixture_json("shopify", name))
    body.update(changes)
    return body


@pytest.mark.parametrize(
    ("body", "headers", "reason"),
    [
        (_body("returns_approve"), {}, Reason.MISSING_FIELD),  # no topic header
        (
            _body("returns_approve"),
            _headers("returns_approve", **{"X-Shopify-Topic": "products/update"}),
            Reason.UNSUPPORTED_PAYLOAD,
        ),
        (_body("returns_approve", order=None), _headers("returns_approve"), Reason.MISSING_FIELD),
        (_body("returns_approve", id=True), _headers("returns_approve"), Reason.INVALID_FIELD),
        (
            _body("returns_approve", return_line_items=[{"quantity": -1}]),
            _headers("returns_approve"),
            Reason.INVALID_FIELD,
        ),
        (
            _body("returns_approve"),
            _headers("returns_approve", **{"X-Shopify-Triggered-At": "soon"}),
            Reason.INVALID_FIELD,
        ),
        (_body("refunds_create", order_id=None), _headers("refunds_create"), Reason.MISSING_FIELD),
        (
            _body("refunds_create", transactions=[{"kind": "refund", "amount": "x"}]),
            _headers("refunds_create"),
            Reason.INVALID_FIELD,
        ),
        (_body("orders_create", id=None), _headers("orders_create"), Reason.MISSING_FIELD),
    ],
)
def test_unusable_payloads_are_rejected_before_any_parking(
    body: dict[str, Any], headers: dict[str, str], reason: Reason
) -> None:
    with pytest.raises(RejectedInput) as caught:
        shopify.normalize(raw("shopify", body, headers))  # no lookup: would park if it got that far
    assert caught.value.reason is reason
    assert not isinstance(caught.value, AwaitingOrderCustomer)


def test_to_events_with_a_customer_equals_the_joined_result() -> None:
    for name in RETURN_FLOW:
        joined = shopify.normalize(raw_fixture("shopify", name), _known).events
        assert as_dicts(shopify.to_events(raw_fixture("shopify", name), SAM)) == as_dicts(joined)
