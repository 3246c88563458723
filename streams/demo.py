"""Realistic demo traffic: customers taking returns through full lifecycles. Deterministic per seed.

Used by `returnsync dev`, the integration tests and the benchmarks, so all three exercise the
same shapes: refunds, exchanges, store credit (some redeemed), cancellations, rejections, open
returns still in transit, and a few serial returners.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from streams.events import Customer, EventType, Outcome, ReturnEvent, ReturnItem

FIRST_NAMES = ("Sarah", "Bill", "Amara", "Jonas", "Mei", "Lucas", "Priya", "Tomás", "Hana", "Olu")
LAST_NAMES = ("Mason", "Joel", "Okafor", "Berg", "Chen", "Silva", "Patel", "Ruiz", "Sato", "Adeyemi")
CATALOG = (
    ("OBS-MD", "Ocean Blue Shirt", "Medium", Decimal("42.00")),
    ("OBS-LG", "Ocean Blue Shirt", "Large", Decimal("42.00")),
    ("CJK-32", "Classic Jeans", "32/32", Decimal("89.50")),
    ("WBT-9", "Weekend Boots", "EU 42", Decimal("149.00")),
    ("LNS-S", "Linen Summer Dress", "Small", Decimal("64.95")),
    ("WCB-OS", "Wool Cap Beanie", "One size", Decimal("19.99")),
)
REASONS = (("Too small", "Fit"), ("Too large", "Fit"), ("Not as described", "Quality"),
           ("Changed my mind", "Other"), ("Arrived damaged", "Quality"))
SOURCES = ("loop", "redo", "swap", "shopify", "aftership", "api")
ENDINGS = ("refund", "refund", "exchange", "store_credit", "cancelled", "rejected", "open")
EPOCH = datetime(2026, 9, 1, tzinfo=UTC)
# How many returns a customer makes: weights for 1, 2, 3 and 4 returns (mean 1.6).
RETURNS_WEIGHTS = (60, 25, 10, 5)


def demo_events(
    customers: int = 300, *, seed: int = 7, tenant: str = "default",
    returns_weights: Sequence[float] = RETURNS_WEIGHTS,
) -> list[ReturnEvent]:
    """Every customer's lifecycle events, interleaved in the order they happened.

    `returns_weights` (for 1..4 returns per customer) changes the mix, e.g. to hit an events
    budget; the default gives the same events as always for a given seed.
    """
    events = [event for customer in demo_customers(customers, seed=seed, tenant=tenant,
                                                   returns_weights=returns_weights)
              for event in customer]
    events.sort(key=lambda event: (event.occurred_at, event.event_id))
    return events


def demo_customers(
    customers: int, *, seed: int = 7, tenant: str = "default",
    returns_weights: Sequence[float] = RETURNS_WEIGHTS,
) -> Iterator[list[ReturnEvent]]:
    """One customer's events at a time, in customer order, for streams too large to hold.

    The same customers and events as `demo_events` with the same arguments, not interleaved.
    """
    if len(returns_weights) != len(RETURNS_WEIGHTS):
        raise ValueError(f"returns_weights needs {len(RETURNS_WEIGHTS)} weights (1..4 returns)")
    rng = random.Random(seed)
    for index in range(customers):
        yield list(_customer_events(rng, index, tenant, returns_weights))


def _customer_events(
    rng: random.Random, index: int, tenant: str, returns_weights: Sequence[float]
) -> Iterator[ReturnEvent]:
    first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
    customer = Customer(
        email=f"{first.lower()}.{last.lower()}.{index}@returnsync-demo.com".replace("á", "a"),
        external_id=f"cust_{10000 + index}",
        first_name=first,
        last_name=last,
    )
    returns = rng.choices((1, 2, 3, 4), weights=returns_weights)[0]
    for number in range(returns):
        yield from _return_lifecycle(rng, customer, f"{index}-{number}", tenant)


def _return_lifecycle(
    rng: random.Random, customer: Customer, ident: str, tenant: str
) -> Iterator[ReturnEvent]:
    source = rng.choice(SOURCES)
    return_id = f"RMA-{ident}"
    order_ref = f"#{1000 + rng.randrange(90000)}"
    at = EPOCH + timedelta(days=rng.uniform(0, 60), seconds=rng.randrange(86400))
    items = tuple(_item(rng) for _ in range(rng.choices((1, 2, 3), weights=(70, 20, 10))[0]))
    value = sum((item.value * item.quantity for item in items if item.value), Decimal(0))
    ending = rng.choice(ENDINGS)

    def event(kind: EventType, hours: float, **fields: object) -> ReturnEvent:
        nonlocal at
        at = at + timedelta(hours=hours)
        return ReturnEvent(
            event_id=f"demo:{return_id}:{kind.value}", type=kind, occurred_at=at, customer=customer,
            tenant=tenant, source=source, return_id=return_id, order_ref=order_ref,
            currency="USD", **fields,  # type: ignore[arg-type]
        )

    yield event(EventType.RETURN_REQUESTED, 0, items=items, amount=value, status_raw="requested")
    if ending == "rejected":
        yield event(EventType.RETURN_REJECTED, 20)
        return
    yield event(EventType.RETURN_APPROVED, rng.uniform(0.1, 24))
    if ending == "cancelled":
        yield event(EventType.RETURN_CANCELLED, rng.uniform(1, 72))
        return
    yield event(EventType.RETURN_IN_TRANSIT, rng.uniform(2, 72))
    if ending == "open":
        return
    yield event(EventType.RETURN_RECEIVED, rng.uniform(24, 120))
    if ending == "refund":
        yield event(EventType.REFUND_ISSUED, 6, amount=value, outcome=Outcome.REFUND)
    elif ending == "exchange":
        yield event(EventType.EXCHANGE_CREATED, 6, outcome=Outcome.EXCHANGE,
                    new_order_ref=f"#EXC-{ident}")
    else:
        yield event(EventType.STORE_CREDIT_ISSUED, 6, amount=value, outcome=Outcome.STORE_CREDIT)
    yield event(EventType.RETURN_CLOSED, 1)
    if ending == "store_credit" and rng.random() < 0.4:
        spent = (value * Decimal(rng.choice(("0.25", "0.5", "1")))).quantize(Decimal("0.01"))
        yield event(EventType.STORE_CREDIT_REDEEMED, rng.uniform(48, 400), amount=spent)


def _item(rng: random.Random) -> ReturnItem:
    sku, name, variant, price = rng.choice(CATALOG)
    reason, parent = rng.choice(REASONS)
    return ReturnItem(sku=sku, product_name=name, variant_name=variant,
                      quantity=rng.choices((1, 2), weights=(85, 15))[0], value=price,
                      reason=reason, reason_parent=parent)
