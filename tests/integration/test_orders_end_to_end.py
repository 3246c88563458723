"""Orders against a real worker, broker and sandbox: `order.placed` from `POST /events` and from
Shopify's `orders/create` webhook moves only profile properties (orders count, return rate, item
rate, net spend, serial returner by rate), never a Klaviyo event, and a return then moves the rate.

Run with `-s` to see one customer's properties before and after the return (the README's sample).
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import httpx
import orjson
import pytest

from streams.events import ReturnEvent, event_from_dict
from streams.projection import ProjectionConfig
from tests.integration.conftest import WorkerFactory
from tests.integration.harness import SandboxThread, as_klaviyo_json, expected_klaviyo, wait_until
from tests.integration.webhook_support import EVENTS_TOKEN, SECRET_ENV, deliver
from tests.streams.adapter_support import fixture_body, fixture_headers

EMAIL = "olivia.martin@example.com"
SAM = "sam.lee@example.com"  # the Shopify fixtures' customer
CONFIG = ProjectionConfig(serial_returner_rate=Decimal("0.5"), serial_returner_min_orders=2)
ENV = {"RETURNSYNC_DEV": "0", "RETURNSYNC_EVENTS_API_TOKEN": EVENTS_TOKEN, **SECRET_ENV,
       "RETURNSYNC_SERIAL_RETURNER_RATE": "0.5", "RETURNSYNC_SERIAL_RETURNER_MIN_ORDERS": "2"}
ORDER_PROPERTIES = ("returns_orders_count", "returns_rate", "returns_item_rate", "returns_net_spend",
                    "returns_serial_returner", "returns_count", "returns_items_count", "returns_refund_total",
                    "returns_active")


def canonical(type: str, event_id: str, occurred_at: str, **fields: Any) -> dict[str, Any]:
    return {"event_id": event_id, "type": type, "occurred_at": occurred_at,
            "customer": {"email": EMAIL, "first_name": "Olivia"}, "source": "api", **fields}


def order(ref: str, amount: str, items: int, at: str, event_id: str | None = None) -> dict[str, Any]:
    return canonical("order.placed", event_id or f"api:order:{ref}", at, order_ref=ref, amount=amount,
                     currency="USD", item_count=items)


ORDERS = [
    order("#2001", "84.00", 3, "2026-02-02T11:00:00Z"),
    order("#2002", "39.50", 1, "2026-02-20T16:45:00Z"),
    order("#2002", "39.50", 1, "2026-02-20T16:45:00Z", event_id="api:order:2002-resent"),  # same order
]
RETURN = [
    canonical("return.requested", "api:R-2001:requested", "2026-03-01T09:00:00Z", return_id="R-2001",
              order_ref="#2001", amount="56.00", currency="USD",
              items=[{"sku": "TEE-BLK-M", "product_name": "Classic Tee", "quantity": 2, "value": "28.00",
                      "reason": "Too small"}]),
    canonical("refund.issued", "api:refund:RF-2001", "2026-03-06T12:00:00Z", return_id="R-2001",
              amount="56.00", currency="USD", outcome="refund"),
    canonical("return.closed", "api:R-2001:closed", "2026-03-06T12:00:01Z", return_id="R-2001",
              outcome="refund"),
]


def post_events(url: str, body: Any) -> None:
    answer = httpx.post(f"{url}/events", json=body, headers={"Authorization": f"Bearer {EVENTS_TOKEN}"},
                        timeout=30)
    assert answer.status_code == 202, answer.text


def properties_of(sandbox: SandboxThread, email: str) -> dict[str, Any]:
    profile = sandbox.profiles().get(email) or {}
    return dict(profile.get("properties") or {})


def settles_on(sandbox: SandboxThread, email: str, wanted: dict[str, Any], what: str) -> dict[str, Any]:
    """Wait until the profile holds exactly the expected returns_* properties; return them."""

    def matching() -> dict[str, Any] | None:
        got = {key: value for key, value in properties_of(sandbox, email).items()
               if key.startswith("returns_")}
        return got if got == wanted else None

    try:
        return wait_until(matching, within=60, what=what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; expected {wanted}") from None


def expected_properties(events: list[dict[str, Any]], email: str) -> dict[str, Any]:
    parsed: list[ReturnEvent] = [event_from_dict(obj) for obj in events]
    return expected_klaviyo(parsed, CONFIG).profiles[email]


def timeline_of(sandbox: SandboxThread, email: str) -> list[dict[str, Any]]:
    return [event for event in sandbox.events() if event["email"] == email]


@pytest.fixture
def worker_url(start_worker: WorkerFactory) -> str:
    worker = start_worker(env=ENV)
    url: str = worker.web_url  # type: ignore[attr-defined]
    return url


def test_orders_set_the_rate_a_return_moves_it_and_no_order_reaches_the_timeline(
    worker_url: str, sandbox: SandboxThread
) -> None:
    post_events(worker_url, ORDERS)
    post_events(worker_url, ORDERS[0])  # delivered twice: still one order
    before = settles_on(sandbox, EMAIL, expected_properties(ORDERS, EMAIL), "the orders' properties")
    assert (before["returns_orders_count"], before["returns_count"]) == (2, 0)
    assert before["returns_net_spend"] == 123.5
    assert before["returns_rate"] == 0.0 and before["returns_item_rate"] == 0.0  # orders known, no return
    assert before["returns_serial_returner"] is False

    post_events(worker_url, RETURN)
    after = settles_on(sandbox, EMAIL, expected_properties([*ORDERS, *RETURN], EMAIL),
                       "the return's properties")
    assert (after["returns_orders_count"], after["returns_count"]) == (2, 1)
    assert after["returns_rate"] == 0.5 and after["returns_item_rate"] == 0.5  # 1 of 2 orders, 2 of 4 units
    assert after["returns_net_spend"] == 123.5 - 56.0
    assert after["returns_serial_returner"] is True, "0.5 of at least 2 orders, with the rate configured"

    # The return's events arrived after any order's would have: the timeline holds only the return.
    metrics = wait_until(lambda: sorted(e["metric"] for e in timeline_of(sandbox, EMAIL))
                         if len(timeline_of(sandbox, EMAIL)) >= 4 else None,
                         within=60, what="the return's timeline events")
    assert metrics == ["Refund Issued", "Return Closed", "Return Requested", "Return Requested Item"]
    order_ids = {obj["event_id"] for obj in ORDERS}
    assert not order_ids & {event["unique_id"] for event in sandbox.events()}
    print("\nsample customer", EMAIL, "(RETURNSYNC_SERIAL_RETURNER_RATE=0.5, MIN_ORDERS=2)")
    print("before the return:", json.dumps({key: before.get(key) for key in ORDER_PROPERTIES}))
    print("after the return: ", json.dumps({key: after.get(key) for key in ORDER_PROPERTIES}))


def test_shopify_orders_create_places_the_order_its_returns_are_rated_against(
    worker_url: str, sandbox: SandboxThread
) -> None:
    names = ["orders_create", "returns_request", "refunds_create"]
    for name in ["orders_create", *names]:  # orders/create re-sent by Shopify: one order
        body, headers = fixture_body("shopify", name), fixture_headers("shopify", name)
        answer = deliver(worker_url, "shopify", body, headers)
        assert answer.status_code == 200, answer.text
    order = orjson.loads(fixture_body("shopify", "orders_create"))
    # One order of 2 units for 123.12 USD; one return of both units, refunded 41.04 USD.
    wanted = as_klaviyo_json({"returns_orders_count": 1, "returns_rate": Decimal(1),
                              "returns_item_rate": Decimal(1), "returns_net_spend": Decimal("82.08"),
                              "returns_serial_returner": False})

    def order_properties() -> dict[str, Any] | None:
        got = properties_of(sandbox, SAM)
        picked = {key: got.get(key) for key in wanted}
        return picked if picked == wanted else None

    wait_until(order_properties, within=60, what=f"the Shopify order's properties {wanted}")
    assert Decimal(order["total_price"]) == Decimal("123.12")
    returned = {"Return Requested", "Refund Issued"}
    wait_until(lambda: {e["metric"] for e in timeline_of(sandbox, SAM)} >= returned,
               within=60, what="the Shopify return's timeline events")
    assert not any(event["unique_id"].startswith("shopify:order:") for event in sandbox.events())
