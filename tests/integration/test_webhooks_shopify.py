"""The Shopify order/customer join in a running worker: returns that arrive before their order
wait for it and end on its customer's profile; what cannot wait is dead-lettered, never lost."""

from __future__ import annotations

import random
from collections.abc import Iterator

import orjson
import pytest

from streams.raw import decode_raw
from tests.integration.harness import wait_until
from tests.integration.webhook_support import (
    Delivery,
    Stack,
    assert_reaches_klaviyo,
    deliver,
    events_of,
    fixture,
    metric,
    running_stack,
    unique_email,
)

HOLD_PER_ORDER = 3
RETURN_FLOW = ("returns_request", "returns_approve", "refunds_create", "returns_close")


@pytest.fixture(scope="module")
def stack(bootstrap_servers: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {"RETURNSYNC_SHOPIFY_HOLD_PER_ORDER": str(HOLD_PER_ORDER)}
    with running_stack(bootstrap_servers, tmp_path_factory.mktemp("shopify"), env) as running:
        yield running


def own_ids(email: str) -> dict[str, str]:
    """The fixtures' customer, order, return, refund and event ids, replaced by this test's own
    (Klaviyo refuses two emails sharing one external id, as the Shopify customer id becomes)."""
    digits = "".join(random.choices("123456789", k=9))
    return {"Sam.Lee@Example.com": email, "6612345678901": f"66{digits}", "5196695273621": f"51{digits}",
            "3547267221": f"35{digits}", "909562077333": f"90{digits}", "98880550000": f"77{digits}"}


def held(stack: Stack) -> float:
    return metric(stack.url, "returnsync_held_events", source="shopify")


def deliver_all(stack: Stack, deliveries: list[Delivery]) -> None:
    for source, body, headers in deliveries:
        response = deliver(stack.url, source, body, headers)
        assert response.status_code == 200, response.text


def dead_letters_of(stack: Stack, deliveries: list[Delivery]) -> list[dict]:
    bodies = {body for _, body, _ in deliveries}
    letters = [orjson.loads(record.value) for record in stack.records("returns.deadletter")]
    return [letter for letter in letters if decode_raw(letter["original"].encode()).body in bodies]


def test_returns_before_their_order_end_on_the_order_customers_profile(stack: Stack) -> None:
    email = unique_email("early")
    ids = own_ids(email)
    returns = [fixture("shopify", name, ids) for name in RETURN_FLOW[:HOLD_PER_ORDER]]
    order = fixture("shopify", "orders_create", ids)
    before = held(stack)

    deliver_all(stack, returns)
    wait_until(lambda: held(stack) == before + len(returns), within=30, what="the returns held")
    assert not events_of(stack.sandbox, {email}), "nothing can be sent before the customer is known"

    deliver_all(stack, [order])
    assert_reaches_klaviyo(stack, [*returns, order])
    wait_until(lambda: held(stack) == before, within=30, what="the hold emptied")
    unique_ids = {key[2] for key in events_of(stack.sandbox, {email})}
    assert {key[0] for key in stack.sandbox.event_keys() if key[2] in unique_ids} == {email}
    assert not dead_letters_of(stack, returns)


def test_webhooks_beyond_the_hold_bound_are_dead_lettered_not_lost(stack: Stack) -> None:
    email = unique_email("bound")
    ids = own_ids(email)
    returns = [fixture("shopify", name, ids) for name in (*RETURN_FLOW, "returns_reopen")]
    before = held(stack)

    deliver_all(stack, returns)
    overflow = returns[HOLD_PER_ORDER:]
    letters = wait_until(lambda: len(dead_letters_of(stack, overflow)) == len(overflow)
                         and dead_letters_of(stack, overflow), within=30, what="the overflow dead-lettered")
    assert {(letter["stage"], letter["reason"]) for letter in letters} == {("normalize", "missing_field")}
    assert all("hold full" in letter["error"] for letter in letters)
    stored = {(raw.body, raw.headers["x-shopify-event-id"])
              for raw in (decode_raw(letter["original"].encode()) for letter in letters)}
    assert stored == {(body, headers["X-Shopify-Event-Id"]) for _, body, headers in overflow}
    assert held(stack) == before + HOLD_PER_ORDER

    order = fixture("shopify", "orders_create", ids)
    deliver_all(stack, [order])
    assert_reaches_klaviyo(stack, [*returns[:HOLD_PER_ORDER], order])
    wait_until(lambda: held(stack) == before, within=30, what="the hold emptied")


def test_returns_of_an_order_without_an_email_are_dead_lettered(stack: Stack) -> None:
    ids = own_ids("")  # a POS order: no email anywhere in it
    early, late = (fixture("shopify", name, ids) for name in ("returns_request", "returns_approve"))
    order = fixture("shopify", "orders_create", ids)
    assert b"@" not in order[1]
    before = held(stack)

    deliver_all(stack, [early])
    wait_until(lambda: held(stack) == before + 1, within=30, what="the return held")
    deliver_all(stack, [order, late])
    letters = wait_until(lambda: len(dead_letters_of(stack, [early, late])) == 2
                         and dead_letters_of(stack, [early, late]), within=30, what="both dead-lettered")
    assert all(letter["reason"] == "missing_field" and "no customer email" in letter["error"]
               for letter in letters)
    assert held(stack) == before
    event_ids = {headers["X-Shopify-Event-Id"] for _, _, headers in (early, late)}
    assert not [key for key in stack.sandbox.event_keys() if key[2].split(":")[-1] in event_ids]
