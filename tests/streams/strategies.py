"""Hypothesis strategies for realistic canonical event streams, and a builder for single events.

A stream is what one customer's partition of `returns.events` could hold: a few returns, each
walking part of a real lifecycle (snapshot platforms resend the items with every status, event
platforms send them once), money facts with stable ids the way adapters derive them
(`loop:refund:<id>`), store-credit redemptions on later orders, and restocks. Times come from a
coarse grid so equal `occurred_at` values (ties) are common. Orders (`order.placed`) are
interleaved at any time, before or after their returns, now and then in a second currency. Every
event goes through `event_from_dict`, so the streams are exactly what the parser lets into the
reducer.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
from hypothesis import strategies as st

from streams.events import ReturnEvent, event_from_dict, format_time

FIXTURES = Path(__file__).parent.parent / "fixtures" / "canonical"
BASE_TIME = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)

SKUS = ("TEE-BLK-M", "TEE-WHT-L", "JEANS-32-30", "DRESS-RED-S", "SOCK-WHT-OS", "HOODIE-GRY-L", "CAP-NVY")
REASONS = (
    ("Too small", "Fit"),
    ("Too large", "Fit"),
    ("Not as described", "Quality"),
    ("Arrived damaged", "Quality"),
    ("Changed my mind", "Other"),
)
LIFECYCLES = (
    ("requested", "approved", "in_transit", "received", "closed"),
    ("approved", "in_transit", "received", "closed"),  # Loop and Swap start at open
    ("requested", "rejected"),
    ("requested", "approved", "cancelled"),
    ("requested", "approved", "expired"),
)
# The same person as different events name them: money facts often carry the email only.
CUSTOMERS: tuple[dict[str, Any], ...] = (
    {"email": "Ava.Brown@Example.com", "first_name": "Ava", "last_name": "Brown", "external_id": "7001"},
    {"email": "liam.chen@example.com", "first_name": "Liam", "last_name": "Chen", "external_id": "7002"},
    {"email": "zoe@example.co.uk", "first_name": "Zoe", "last_name": None, "external_id": None},
)
SOURCES = ("loop", "redo", "swap", "shopify", "aftership", "api")
SNAPSHOTS = ("items+amount", "items", "no items", "amount", "fewer items+amount", "fewer items")

money = st.decimals(min_value=Decimal("0.01"), max_value=Decimal("400"), places=2)
# Minutes on a 6-hour grid: returns a few days apart, and plenty of exact ties.
offsets = st.integers(min_value=0, max_value=40).map(lambda n: n * 360)


def at(minutes: int) -> str:
    return format_time(BASE_TIME + timedelta(minutes=minutes))


def event(type: str, **fields: Any) -> ReturnEvent:
    """One canonical event through the real parser; `customer` may be given as an email."""
    customer = fields.pop("customer", "ava.brown@example.com")
    obj: dict[str, Any] = {
        "event_id": f"api:{type}:{fields.get('return_id', 'none')}:{fields.get('occurred_at', '')}",
        "type": type,
        "occurred_at": "2025-03-01T09:00:00Z",
        "customer": {"email": customer} if isinstance(customer, str) else customer,
        **fields,
    }
    if type.startswith("return.") and "return_id" not in fields:
        obj["return_id"] = "R1"
    return event_from_dict(obj)


def load_fixture(name: str) -> list[ReturnEvent]:
    """A file of `tests/fixtures/canonical/`, parsed, in file (delivery) order."""
    lines = (FIXTURES / name).read_text().splitlines()
    return [event_from_dict(orjson.loads(line)) for line in lines if line.strip()]


def fixture_names() -> list[str]:
    return sorted(path.name for path in FIXTURES.glob("*.jsonl"))


@st.composite
def items(draw: st.DrawFn) -> list[dict[str, Any]]:
    skus = draw(st.lists(st.sampled_from(SKUS), min_size=1, max_size=3, unique=True))
    lines = []
    for sku in skus:
        reason, parent = draw(st.sampled_from((*REASONS, (None, None))))
        line: dict[str, Any] = {
            "sku": sku,
            "product_name": sku.split("-")[0].title(),
            "quantity": draw(st.integers(min_value=1, max_value=3)),
            "value": str(draw(money)),
        }
        if reason:
            line |= {"reason": reason, "reason_parent": parent}
        lines.append(line)
    return lines


def customer_blocks(customer: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """The customer object of one event: the email always, each other field when the platform sends it."""
    optional = [name for name in ("external_id", "first_name", "last_name") if customer.get(name)]
    return (
        st.lists(st.sampled_from(optional), unique=True).map(
            lambda names: {"email": customer["email"], **{name: customer[name] for name in names}}
        )
        if optional
        else st.just({"email": customer["email"]})
    )


@st.composite
def return_facts(
    draw: st.DrawFn,
    customer: dict[str, Any],
    return_id: str,
    source: str,
    min_statuses: int = 0,
    base: int = 0,
) -> list[dict[str, Any]]:
    """Status events for part of one lifecycle, plus the money facts and restocks of the return."""
    lifecycle = draw(st.sampled_from(LIFECYCLES))
    # Half the returns have ended; with 0 statuses only money facts arrived (status events late).
    length = draw(st.just(len(lifecycle)) | st.integers(min_value=min_statuses, max_value=len(lifecycle)))
    start = base + draw(offsets)
    lines = draw(items())
    outcome = draw(st.sampled_from((None, "refund", "exchange", "store_credit")))
    common: dict[str, Any] = {
        "source": source,
        "customer": customer,
        "return_id": return_id,
        "currency": "USD",
    }
    order_ref = f"#{return_id.split('-')[-1]}"
    facts: list[dict[str, Any]] = []
    minute = start
    for index, status in enumerate(lifecycle[:length]):
        minute += 0 if index == 0 else draw(st.sampled_from((0, 360, 1440, 4320)))
        fact = {
            **common,
            "customer": draw(customer_blocks(customer)),
            "event_id": f"{source}:{return_id}:{status}",
            "type": f"return.{status}",
            "occurred_at": at(minute),
            "status_raw": status.upper(),
        }
        # Snapshot platforms resend the items (sometimes fewer: one was taken off the return);
        # event platforms send them once, and some statuses carry only the return's value.
        carried = draw(st.sampled_from(SNAPSHOTS if index else SNAPSHOTS[:4]))
        snapshot = lines[:-1] if carried.startswith("fewer") else [] if carried.startswith("no") else lines
        if "items" in carried and snapshot:
            fact["items"] = snapshot
        if "amount" in carried:
            fact["amount"] = str(sum(Decimal(line["value"]) * line["quantity"] for line in snapshot or lines))
        if outcome and draw(st.booleans()):
            fact["outcome"] = outcome
        if draw(st.booleans()):
            fact["order_ref"] = order_ref
        facts.append(fact)
    money_facts = (
        ("refund.issued", "refund", draw(st.integers(min_value=0, max_value=2))),
        ("exchange.created", "exchange", draw(st.integers(min_value=0, max_value=1))),
        ("store_credit.issued", "credit", draw(st.integers(min_value=0, max_value=2))),
    )
    for type_, word, count in money_facts:
        for n in range(count):
            facts.append(
                {
                    **common,
                    "customer": {"email": customer["email"]},
                    "order_ref": order_ref if draw(st.booleans()) else None,
                    "event_id": f"{source}:{word}:{return_id}-{n}",
                    "type": type_,
                    "occurred_at": at(start + draw(offsets)),
                    "amount": None if word == "exchange" else str(draw(money)),
                }
            )
    if draw(st.booleans()):
        facts.append(
            {
                **common,
                "event_id": f"{source}:restock:{return_id}:{lines[0]['sku']}",
                "type": "item.restocked",
                "occurred_at": at(start + draw(offsets)),
                "items": [{"sku": lines[0]["sku"], "quantity": 1}],
            }
        )
    return facts


@st.composite
def order_facts(draw: st.DrawFn, customer: dict[str, Any], source: str, tag: str,
                max_orders: int = 4, first: int = 0, base: int = 0) -> list[dict[str, Any]]:
    """Orders the customer placed, one `order.placed` each (distinct ids and order refs from
    `first` on; some share their ref with a return's order, as a return of that order would)."""
    facts = []
    for n in range(first, first + draw(st.integers(min_value=0, max_value=max_orders))):
        facts.append({
            "event_id": f"{source}:order:{tag}-{n}",
            "type": "order.placed",
            "source": source,
            "customer": draw(customer_blocks(customer)),
            "occurred_at": at(base + draw(offsets)),
            "order_ref": f"#{1000 + n}",
            "amount": str(draw(money)),
            "currency": draw(st.sampled_from(("USD", "USD", "USD", "EUR"))),
            "item_count": draw(st.integers(min_value=0, max_value=5)),
        })
    return facts


@st.composite
def customer_streams(draw: st.DrawFn, customer: dict[str, Any] | None = None) -> list[ReturnEvent]:
    """One customer's events, in a plausible delivery order (by time, ties in any order)."""
    customer = customer or draw(st.sampled_from(CUSTOMERS))
    source = draw(st.sampled_from(SOURCES))
    tag = customer["email"].split("@")[0].replace(".", "").lower()
    facts: list[dict[str, Any]] = []
    for n in range(draw(st.integers(min_value=1, max_value=4))):
        facts += draw(return_facts(customer, f"{source}-{tag}-{1000 + n}", source, min_statuses=int(n == 0)))
    for n in range(draw(st.integers(min_value=0, max_value=3))):
        facts.append(
            {
                "event_id": f"{source}:redeem:{tag}-ORD-{n}",
                "type": "store_credit.redeemed",
                "source": source,
                "customer": {"email": customer["email"]},
                "occurred_at": at(draw(offsets)),
                "order_ref": f"#R{n}",
                "amount": str(draw(money)),
                "currency": "USD",
            }
        )
    facts += draw(order_facts(customer, source, tag))
    facts = [{key: value for key, value in fact.items() if value is not None} for fact in facts]
    ordered = sorted(draw(st.permutations(facts)), key=lambda fact: fact["occurred_at"])
    return [event_from_dict(fact) for fact in ordered]


@st.composite
def event_streams(draw: st.DrawFn) -> list[ReturnEvent]:
    """Several customers' streams interleaved, as one topic partition would hold them."""
    customers = draw(st.lists(st.sampled_from(CUSTOMERS), min_size=2, max_size=3, unique_by=lambda c: str(c)))
    streams = [draw(customer_streams(customer)) for customer in customers]
    merged: list[ReturnEvent] = []
    while any(streams):
        stream = draw(st.sampled_from([stream for stream in streams if stream]))
        merged.append(stream.pop(0))
    return merged


@st.composite
def long_customer_streams(draw: st.DrawFn, min_returns: int = 20, max_returns: int = 60) -> list[ReturnEvent]:
    """A serial returner: tens of returns over months, each starting a day or two after the one
    before (so a few are open at once), in time order, ties in any order."""
    customer = draw(st.sampled_from(CUSTOMERS))
    source = draw(st.sampled_from(SOURCES))
    tag = customer["email"].split("@")[0].replace(".", "").lower()
    facts: list[dict[str, Any]] = []
    for n in range(draw(st.integers(min_value=min_returns, max_value=max_returns))):
        base = n * draw(st.sampled_from((1440, 2880)))
        facts += draw(return_facts(customer, f"{source}-{tag}-{1000 + n}", source, min_statuses=1, base=base))
        facts += draw(order_facts(customer, source, tag, max_orders=2, first=3 * n, base=base))
    facts = [{key: value for key, value in fact.items() if value is not None} for fact in facts]
    ordered = sorted(draw(st.permutations(facts)), key=lambda fact: fact["occurred_at"])
    return [event_from_dict(fact) for fact in ordered]


def serial_history(events: int, seed: int = 7, email: str = "noemail@store.com") -> list[ReturnEvent]:
    """A fixed long history for one customer (a placeholder email many orders share): return
    lifecycles a day or two apart, refunds, exchanges and store credit, some returns left open,
    about 5% redelivered and neighbours swapped. Deterministic for a seed: fixtures depend on it."""
    rng = random.Random(seed)
    lines: list[dict[str, Any]] = []
    minute, number = 0, 0
    while len(lines) < events:
        number += 1
        return_id = f"loop-{seed}-{number}"
        minute += rng.choice((720, 1440, 2880))
        lifecycle = rng.choice(LIFECYCLES) if rng.random() < 0.97 else ("requested", "approved")
        sku = rng.choice(SKUS)
        items = [{"sku": sku, "quantity": rng.randint(1, 2), "value": f"{rng.randint(5, 90)}.00"}]
        for step, word in enumerate(lifecycle):
            lines.append({
                "event_id": f"loop:{return_id}:{word}", "type": f"return.{word}", "source": "loop",
                "occurred_at": at(minute + step * 600), "customer": {"email": email},
                "return_id": return_id, "currency": "USD", **({"items": items} if step == 0 else {}),
            })
        if lifecycle[-1] == "closed":
            kind = rng.choice(("refund.issued", "exchange.created", "store_credit.issued"))
            lines.append({
                "event_id": f"loop:{kind}:{return_id}", "type": kind, "source": "loop",
                "occurred_at": at(minute + len(lifecycle) * 600), "customer": {"email": email},
                "return_id": return_id, "currency": "USD",
                **({} if kind == "exchange.created" else {"amount": items[0]["value"]}),
            })
    history = [event_from_dict(line) for line in lines[:events]]
    delivered: list[ReturnEvent] = []
    for event in history:
        delivered.append(event)
        if rng.random() < 0.05:
            delivered.append(event)
    for index in range(len(delivered) - 1):
        if rng.random() < 0.1:
            delivered[index], delivered[index + 1] = delivered[index + 1], delivered[index]
    return delivered
