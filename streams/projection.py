"""The projection (SPEC §5): state -> Klaviyo profile properties, applied event -> Klaviyo events.

Pure: what to send, never how. Money stays `Decimal` here; the Klaviyo client turns it into a
JSON number at the wire.

Bounded: whatever a customer's history holds, every value sent fits Klaviyo's limits
(klaviyo-api.md §3: a profile body <= 100 KB, event arrays <= 4000 items, strings <= 100 KB), so
no input can make a customer unsyncable. The rules (README "What Klaviyo receives"):

- text: every string value at most `MAX_TEXT` characters (cut, never refused).
- `returns_active_skus`: at most `MAX_PROFILE_SKUS` SKUs and `MAX_PROFILE_SKU_BYTES` bytes of
  them; when over, the SKUs of the most recently opened active returns are the ones kept.
- per-item events: the first `MAX_ITEM_EVENTS` items of a `return.requested` get one each.
- the main event's `Items` lists the first `MAX_LISTED_ITEMS` items and `SKUs` the first
  `MAX_LISTED_SKUS`; when any item is left out, `ItemLines` says how many lines there were.
- `external_id` over `MAX_TEXT` characters is not sent: cut, it would name another profile.

Orders (`order.placed`) add no timeline event (the store already sends Klaviyo's Placed Order);
they only feed the order properties: `returns_orders_count`, `returns_rate`, `returns_item_rate`,
`returns_net_spend`, and `returns_serial_returner` by rate when configured.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from streams.events import EventType, ReturnEvent, ReturnItem, format_time
from streams.state import CustomerState, ReturnRecord

DEFAULT_METRIC_NAMES: Mapping[str, str] = {
    EventType.RETURN_REQUESTED: "Return Requested",
    EventType.RETURN_APPROVED: "Return Approved",
    EventType.RETURN_REJECTED: "Return Rejected",
    EventType.RETURN_CANCELLED: "Return Cancelled",
    EventType.RETURN_EXPIRED: "Return Expired",
    EventType.RETURN_IN_TRANSIT: "Return In Transit",
    EventType.RETURN_RECEIVED: "Return Received",
    EventType.RETURN_CLOSED: "Return Closed",
    EventType.REFUND_ISSUED: "Refund Issued",
    EventType.EXCHANGE_CREATED: "Exchange Created",
    EventType.STORE_CREDIT_ISSUED: "Store Credit Issued",
    EventType.STORE_CREDIT_REDEEMED: "Store Credit Redeemed",
    "item": "Return Requested Item",
}
"""Metric per canonical type; `item` names the per-item metric. `item.restocked` and
`order.placed` send none."""

MAX_TEXT = 255
"""Characters of any text value sent (names, reasons, SKUs, ids): far above any real one."""
MAX_PROFILE_SKUS = 100
MAX_PROFILE_SKU_BYTES = 10_000
"""With MAX_TEXT these keep a whole profile body a small fraction of Klaviyo's 100 KB."""
MAX_ITEM_EVENTS = 50
MAX_LISTED_ITEMS = 50
MAX_LISTED_SKUS = 100
RATE_PLACES = Decimal("0.0001")
"""Rates are sent to 4 decimal places (33.33%): the same digits on every run, so reconcile
compares them exactly."""


@dataclass(frozen=True, slots=True)
class ProjectionConfig:
    property_prefix: str = "returns_"
    serial_returner_threshold: int = 3
    serial_returner_rate: Decimal | None = None
    """Also a serial returner at this return rate or more (returns / orders), once
    `serial_returner_min_orders` orders are known. None: by count only."""
    serial_returner_min_orders: int = 5
    metric_names: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_METRIC_NAMES))


@dataclass(frozen=True, slots=True)
class ProfileUpdate:
    """One profile write: identifiers plus the full set of return properties (None clears)."""

    email: str
    properties: Mapping[str, Any]
    external_id: str | None = None
    first_name: str | None = None
    last_name: str | None = None


@dataclass(frozen=True, slots=True)
class KlaviyoEvent:
    email: str
    metric: str
    unique_id: str
    time: datetime
    properties: Mapping[str, Any]
    value: Decimal | None = None
    value_currency: str | None = None
    backfill: bool = False


def profile_update(state: CustomerState, config: ProjectionConfig) -> ProfileUpdate:
    external_id = state.identity.external_id
    return ProfileUpdate(
        email=state.identity.email,
        external_id=external_id if external_id is None or len(external_id) <= MAX_TEXT else None,
        first_name=_text(state.identity.first_name),
        last_name=_text(state.identity.last_name),
        properties=profile_properties(state, config),
    )


def profile_properties(state: CustomerState, config: ProjectionConfig) -> dict[str, Any]:
    """Every property, always: an absent value is None so profile-import clears a stale one."""
    active = state.active_returns
    last = state.last_return
    values: dict[str, Any] = {
        "active": bool(active),
        "active_count": len(active),
        "active_skus": active_skus(active),
        "last_status": _text(last.status) if last else None,
        "last_outcome": _text(last.outcome) if last else None,
        "last_reason": _text(last.reason) if last else None,
        "last_at": _time(last.status_at) if last else None,
        "count": state.return_count,
        "items_count": state.item_count,
        "refund_total": state.refund_total,
        "exchange_count": state.exchange_count,
        "store_credit_balance": state.store_credit_balance,
        "serial_returner": serial_returner(state, config),
        "first_return_at": _time(state.first_return_at),
        # Absent, not 0, until an order is known: no order data is not "no orders" (and customers
        # synced before orders existed do not all drift in reconcile).
        "orders_count": state.order_count or None,
        "rate": _ratio(state.return_count, state.order_count),
        "item_rate": _ratio(state.item_count, state.ordered_item_count),
        "net_spend": state.net_spend,
    }
    return {config.property_prefix + name: value for name, value in values.items()}


def serial_returner(state: CustomerState, config: ProjectionConfig) -> bool:
    """At or over the returns threshold; or, when a rate is configured and enough orders are
    known, returning at least that share of them (compared exactly, not on the rounded rate)."""
    if state.return_count >= config.serial_returner_threshold:
        return True
    rate = config.serial_returner_rate
    return (rate is not None and state.order_count >= config.serial_returner_min_orders
            and state.return_count >= rate * state.order_count)


def _ratio(part: int, whole: int) -> Decimal | None:
    """part / whole to `RATE_PLACES`, or None when there is no whole: never a division by zero,
    and no rate is better than a made-up one."""
    if whole <= 0:
        return None
    return (Decimal(part) / Decimal(whole)).quantize(RATE_PLACES, rounding=ROUND_HALF_EVEN)


def active_skus(active: Sequence[ReturnRecord]) -> list[str]:
    """The distinct SKUs of the active returns (oldest first, as `active_returns` orders them),
    bounded: when they do not all fit, those of the most recently opened returns are kept."""
    ordered = list(dict.fromkeys(_cut(sku) for record in active for sku in record.skus))
    kept: set[str] = set()
    size = 0
    for sku in dict.fromkeys(_cut(sku) for record in reversed(active) for sku in record.skus):
        size += len(sku.encode())
        if len(kept) == MAX_PROFILE_SKUS or size > MAX_PROFILE_SKU_BYTES:
            break
        kept.add(sku)
    return ordered if len(kept) == len(ordered) else [sku for sku in ordered if sku in kept]


def klaviyo_events(
    event: ReturnEvent, config: ProjectionConfig, *, backfill: bool = False
) -> list[KlaviyoEvent]:
    """The timeline entries one applied event adds: its own metric, plus one per requested item.
    None for an order, whatever the metric names say: Klaviyo has Placed Order from the store."""
    if event.type is EventType.ORDER_PLACED:
        return []
    metric = config.metric_names.get(event.type)
    if metric is None:
        return []
    main = KlaviyoEvent(
        email=event.customer.email,
        metric=metric,
        unique_id=event.event_id,
        time=event.occurred_at,
        properties=_event_properties(event),
        value=event.amount,
        value_currency=event.currency if event.amount is not None else None,
        backfill=backfill,
    )
    if event.type is not EventType.RETURN_REQUESTED:
        return [main]
    item_metric = config.metric_names["item"]
    # Bounded like `Items`: the main event's ItemLines says how many there were.
    items = [
        KlaviyoEvent(
            email=event.customer.email,
            metric=item_metric,
            unique_id=f"{event.event_id}:{index}",
            time=event.occurred_at,
            properties={**_common_properties(event), **_item_properties(item)},
            value=item.value * item.quantity if item.value is not None else None,
            value_currency=event.currency if item.value is not None else None,
            backfill=backfill,
        )
        for index, item in enumerate(event.items[:MAX_ITEM_EVENTS])
    ]
    return [main, *items]


def _common_properties(event: ReturnEvent) -> dict[str, Any]:
    return _compact(
        {
            "ReturnId": _text(event.return_id),
            "OrderRef": _text(event.order_ref),
            "Source": event.source,
            "Tenant": event.tenant,
            "Status": event.type.status if event.type.is_status else None,
            "StatusRaw": _text(event.status_raw),
        }
    )


def _event_properties(event: ReturnEvent) -> dict[str, Any]:
    skus = [_cut(item.sku) for item in event.items if item.sku]
    reason = next((item.reason for item in event.items if item.reason), None)
    listed = event.items[:MAX_LISTED_ITEMS]
    cut = len(event.items) > min(MAX_LISTED_ITEMS, MAX_ITEM_EVENTS) or len(skus) > MAX_LISTED_SKUS
    return _compact(
        {
            **_common_properties(event),
            "Outcome": event.outcome.value if event.outcome else None,
            "Reason": _text(reason),
            "NewOrderRef": _text(event.new_order_ref),
            "ItemCount": sum(item.quantity for item in event.items) or None,
            "ItemLines": len(event.items) if cut else None,
            "SKUs": skus[:MAX_LISTED_SKUS] or None,
            "Items": [_item_properties(item) for item in listed] or None,
        }
    )


def _item_properties(item: ReturnItem) -> dict[str, Any]:
    return _compact(
        {
            "SKU": _text(item.sku),
            "ProductName": _text(item.product_name),
            "VariantName": _text(item.variant_name),
            "Quantity": item.quantity,
            "Value": item.value,
            "Reason": _text(item.reason),
            "ReasonParent": _text(item.reason_parent),
            "Outcome": _text(item.outcome),
            "NewSKU": _text(item.new_sku),
        }
    )


def _text(value: str | None) -> str | None:
    return _cut(value) if value is not None else None


def _cut(value: str) -> str:
    return value[:MAX_TEXT]


def _compact(values: dict[str, Any]) -> dict[str, Any]:
    # Klaviyo ignores null and "" event properties anyway; leaving them out keeps bodies small.
    return {key: value for key, value in values.items() if value is not None and value != ""}


def _time(value: datetime | None) -> str | None:
    return format_time(value) if value is not None else None
