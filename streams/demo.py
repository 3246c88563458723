"""Realistic demo traffic: customers taking returns through full lifecycles. Deterministic per seed.

Used by `returnsync dev`, the integration tests and the benchmarks, so all three exercise the
same shapes: refunds, exchanges, store credit (some redeemed), cancellations, rejections, open
returns still in transit, and a few serial returners. `serial_returner_events` is one customer's
long history (thousands of events over years, with redeliveries and reordering) for the state
size benchmark and the reducer's property tests.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from streams.events import DEFAULT_TENANT, Customer, EventType, Outcome, ReturnEvent, ReturnItem

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
# A serial returner's delivery: the share of events delivered twice (a producer's retry, a
# platform's webhook redelivery) and the share arriving a few places late.
REDELIVERED_SHARE = 0.03
REORDERED_SHARE = 0.05
# Events per lifecycle, on average, in a serial returner's history (restocks included): sizes
# the gap between returns so a history spans about the years asked for.
_EVENTS_PER_LIFECYCLE = 4.9


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
    rng: random.Random, customer: Customer, ident: str, tenant: str, start: datetime | None = None
) -> Iterator[ReturnEvent]:
    source = rng.choice(SOURCES)
    return_id = f"RMA-{ident}"
    order_ref = f"#{1000 + rng.randrange(90000)}"
    # A serial history places its returns itself; the demo's draws stay as they were for a seed.
    at = start or EPOCH + timedelta(days=rng.uniform(0, 60), seconds=rng.randrange(86400))
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


def serial_returner_events(
    email: str, events: int, seed: int = 7, *, tenant: str = DEFAULT_TENANT, years: float = 3.0
) -> list[ReturnEvent]:
    """One customer's long history, exactly `events` events in delivery order.

    Hundreds of returns (for thousands of events) through the same lifecycles as the demo
    (refunds, exchanges, store credit, cancellations, rejections, some still open), started
    one after another over about `years` years up to the demo epoch and overlapping in time,
    with restocks of received items. Delivery is imperfect as in production: about 3% of
    events are delivered twice (the very same event, so a true duplicate: same id, same
    content) a few to fifty places later, and about 5% arrive a few places late. The last
    returns may be cut short by `events`, as a real history's newest returns are still open.
    Pure and deterministic for the same arguments.
    """
    if events < 0:
        raise ValueError("events must be >= 0")
    rng = random.Random(seed)
    customer = Customer(email=email, external_id=f"cust_serial_{seed}", first_name="Sam",
                        last_name="Returner")
    lifecycles = max(1, math.ceil(events / _EVENTS_PER_LIFECYCLE))
    gap = timedelta(days=365 * years) / lifecycles
    began = EPOCH - timedelta(days=365 * years)
    history: list[ReturnEvent] = []
    number = 0
    while len(history) < events:
        start = began + gap * number + gap * rng.random()
        lifecycle = list(_return_lifecycle(rng, customer, f"S{seed}-{number}", tenant, start))
        history.extend(lifecycle)
        history.extend(_restocks(rng, lifecycle))
        number += 1
    history.sort(key=lambda event: (event.occurred_at, event.event_id))
    return _delivered(rng, history)[:events]


def _restocks(rng: random.Random, lifecycle: list[ReturnEvent]) -> Iterator[ReturnEvent]:
    """The warehouse restocks about half of the received returns, a day or two later."""
    received = next((event for event in lifecycle if event.type is EventType.RETURN_RECEIVED), None)
    if received is not None and rng.random() < 0.5:
        yield replace(
            received, event_id=f"demo:{received.return_id}:{EventType.ITEM_RESTOCKED.value}",
            type=EventType.ITEM_RESTOCKED, status_raw=None,
            occurred_at=received.occurred_at + timedelta(hours=rng.uniform(12, 60)),
        )


def _delivered(rng: random.Random, history: list[ReturnEvent]) -> list[ReturnEvent]:
    """`history` as a broker delivers it: some events late by a few places, some twice."""
    placed: list[tuple[float, int, ReturnEvent]] = []
    for index, event in enumerate(history):
        late = rng.uniform(1.5, 5) if rng.random() < REORDERED_SHARE else 0.0
        placed.append((index + late, len(placed), event))
        if rng.random() < REDELIVERED_SHARE:
            placed.append((index + rng.uniform(1, 50), len(placed), event))
    placed.sort(key=lambda entry: entry[:2])
    return [event for _, _, event in placed]


def _item(rng: random.Random) -> ReturnItem:
    sku, name, variant, price = rng.choice(CATALOG)
    reason, parent = rng.choice(REASONS)
    return ReturnItem(sku=sku, product_name=name, variant_name=variant,
                      quantity=rng.choices((1, 2), weights=(85, 15))[0], value=price,
                      reason=reason, reason_parent=parent)
