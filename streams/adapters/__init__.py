"""Platform adapters: one raw webhook in, canonical return events out. Pure: no I/O.

Two entry points, one per kind of caller:

- `normalize(raw, customer_for_order=None) -> Normalized` — the normalize agent's call. Besides
  `events` it reports what the events alone cannot say, so nothing is dropped silently:
  `unknown_status` (a platform status word with no mapping: no status event was made; count it),
  `skipped` (a well-formed webhook that means nothing canonical, with a `Skip` reason; count it),
  and for Shopify the order/customer join (`order_customer`, `awaiting_order`; see
  `streams.adapters.shopify`, whose lookup `customer_for_order` feeds).
- `to_events(raw) -> list[ReturnEvent]` / `ADAPTERS[source]` — just the events. For Shopify
  `returns/*` and `refunds/create` it raises `AwaitingOrderCustomer` (a `RejectedInput`), since
  no customer can be looked up without the join.

Both raise only `RejectedInput`, whose `reason` is the dead-letter reason: `NOT_JSON`,
`NOT_AN_OBJECT`, `MISSING_FIELD` (no customer email, no return id ...), `INVALID_FIELD`,
`UNSUPPORTED_PAYLOAD` (a topic no adapter reads), `UNKNOWN_SOURCE`.
"""

from __future__ import annotations

from collections.abc import Callable

from streams.adapters import aftership, loop, redo, shopify, swap
from streams.adapters.common import CustomerLookup, Normalized, OrderCustomer, Skip
from streams.adapters.shopify import AwaitingOrderCustomer
from streams.errors import Reason, RejectedInput
from streams.events import ReturnEvent
from streams.raw import RawWebhook

__all__ = [
    "ADAPTERS",
    "AwaitingOrderCustomer",
    "CustomerLookup",
    "Normalized",
    "OrderCustomer",
    "Skip",
    "normalize",
    "to_events",
]

ADAPTERS: dict[str, Callable[[RawWebhook], list[ReturnEvent]]] = {
    "loop": loop.to_events,
    "redo": redo.to_events,
    "swap": swap.to_events,
    "shopify": shopify.to_events,
    "aftership": aftership.to_events,
}

_NORMALIZERS: dict[str, Callable[[RawWebhook], Normalized]] = {
    "loop": loop.normalize,
    "redo": redo.normalize,
    "swap": swap.normalize,
    "aftership": aftership.normalize,
}


def normalize(raw: RawWebhook, customer_for_order: CustomerLookup | None = None) -> Normalized:
    if raw.source == "shopify":
        return shopify.normalize(raw, customer_for_order)
    normalizer = _NORMALIZERS.get(raw.source)
    if normalizer is None:
        raise RejectedInput(Reason.UNKNOWN_SOURCE, f"no adapter for source {raw.source!r}")
    return normalizer(raw)


def to_events(raw: RawWebhook) -> list[ReturnEvent]:
    adapter = ADAPTERS.get(raw.source)
    if adapter is None:
        raise RejectedInput(Reason.UNKNOWN_SOURCE, f"no adapter for source {raw.source!r}")
    return adapter(raw)
