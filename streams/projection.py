"""The projection (SPEC §5): state -> Klaviyo profile properties, applied event -> Klaviyo events.

Pure: what to send, never how. Money stays `Decimal` here; the Klaviyo client turns it into a
JSON number at the wire.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from streams.events import EventType, ReturnEvent, ReturnItem, format_time
from streams.state import CustomerState

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
"""Metric per canonical type; `item` names the per-item metric. `item.restocked` sends none."""


@dataclass(frozen=True, slots=True)
class ProjectionConfig:
    property_prefix: str = "returns_"
    serial_returner_threshold: int = 3
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
    return ProfileUpdate(
        email=state.identity.email,
        external_id=state.identity.external_id,
        first_name=state.identity.first_name,
        last_name=state.identity.last_name,
        properties=profile_properties(state, config),
    )


def profile_properties(state: CustomerState, config: ProjectionConfig) -> dict[str, Any]:
    """Every property, always: an absent value is None so profile-import clears a stale one."""
    active = state.active_returns
    active_skus = list(dict.fromkeys(sku for record in active for sku in record.skus))
    last = state.last_return
    values: dict[str, Any] = {
        "active": bool(active),
        "active_count": len(active),
        "active_skus": active_skus,
        "last_status": last.status if last else None,
        "last_outcome": last.outcome if last else None,
        "last_reason": last.reason if last else None,
        "last_at": _time(last.status_at) if last else None,
        "count": state.return_count,
        "items_count": state.item_count,
        "refund_total": state.refund_total,
        "exchange_count": state.exchange_count,
        "store_credit_balance": state.store_credit_balance,
        "serial_returner": state.return_count >= config.serial_returner_threshold,
        "first_return_at": _time(state.first_return_at),
    }
    return {config.property_prefix + name: value for name, value in values.items()}


def klaviyo_events(
    event: ReturnEvent, config: ProjectionConfig, *, backfill: bool = False
) -> list[KlaviyoEvent]:
    """The timeline entries one applied event adds: its own metric, plus one per requested item."""
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
        for index, item in enumerate(event.items)
    ]
    return [main, *items]


def _common_properties(event: ReturnEvent) -> dict[str, Any]:
    return _compact(
        {
            "ReturnId": event.return_id,
            "OrderRef": event.order_ref,
            "Source": event.source,
            "Tenant": event.tenant,
            "Status": event.type.status if event.type.is_status else None,
            "StatusRaw": event.status_raw,
        }
    )


def _event_properties(event: ReturnEvent) -> dict[str, Any]:
    skus = [item.sku for item in event.items if item.sku]
    reasons = [item.reason for item in event.items if item.reason]
    return _compact(
        {
            **_common_properties(event),
            "Outcome": event.outcome.value if event.outcome else None,
            "Reason": reasons[0] if reasons else None,
            "NewOrderRef": event.new_order_ref,
            "ItemCount": sum(item.quantity for item in event.items) or None,
            "SKUs": skus or None,
            "Items": [_item_properties(item) for item in event.items] or None,
        }
    )


def _item_properties(item: ReturnItem) -> dict[str, Any]:
    return _compact(
        {
            "SKU": item.sku,
            "ProductName": item.product_name,
            "VariantName": item.variant_name,
            "Quantity": item.quantity,
            "Value": item.value,
            "Reason": item.reason,
            "ReasonParent": item.reason_parent,
            "Outcome": item.outcome,
            "NewSKU": item.new_sku,
        }
    )


def _compact(values: dict[str, Any]) -> dict[str, Any]:
    # Klaviyo ignores null and "" event properties anyway; leaving them out keeps bodies small.
    return {key: value for key, value in values.items() if value is not None and value != ""}


def _time(value: datetime | None) -> str | None:
    return format_time(value) if value is not None else None
