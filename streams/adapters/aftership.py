"""AfterShip Returns (reference §5.1): `{id, event, version, created_at, data}`, data a snapshot.

Each delivery is one transition with its own event id (`aftership:<envelope id>`), so the event
name decides the status: `return.submitted`, `return.approved`, ... (2024-10). The legacy
`return.created` / `return.updated` carry the status in `data.status` instead, shipment events
in the tracking status, and drop-off events (Happy Returns, Retail Reworks) in the drop-off's
status: handed over at the collection point, the items are on their way. Label and restock
events change no status. The snapshot's money facts are restated on every delivery under
stable ids: `aftership:refund:<return id>` (or `store_credit`, by refund destination) and
`aftership:exchange:<return id>` once an exchange order exists.
"""

from __future__ import annotations

from datetime import datetime

from streams.adapters.common import (
    Context,
    Normalized,
    Skip,
    customer,
    fact_id,
    outcome_of,
    read_status,
    snapshot_id,
    split_name,
    tenant_of,
    validated,
)
from streams.adapters.payload import (
    Json,
    as_text,
    currency,
    load_object,
    money_object,
    obj,
    objects,
    positive,
    quantity,
    required_obj,
    required_text,
    text,
    texts,
    time_field,
)
from streams.errors import Reason, RejectedInput
from streams.events import Customer, EventType, Outcome, ReturnEvent, ReturnItem
from streams.raw import RawWebhook
from streams.state import STATUS_RANK

SOURCE = "aftership"

_EVENT = {
    "return.submitted": EventType.RETURN_REQUESTED,
    "return.approved": EventType.RETURN_APPROVED,
    "return.rejected": EventType.RETURN_REJECTED,
    "return.expired": EventType.RETURN_EXPIRED,
    "return.resolved": EventType.RETURN_CLOSED,
    "return.receiving.created": EventType.RETURN_RECEIVED,
    "return.received": EventType.RETURN_RECEIVED,
}
_BY_STATUS = frozenset({"return.created", "return.updated"})
_BY_TRACKING = frozenset({"return.shipment.updated", "return.dropoff.shipment.updated"})
_BY_DROPOFF = frozenset({"return.dropoff.updated", "return.dropoff.shipment.updated"})
_NO_STATUS = frozenset(
    {
        "return.dropoff.created",
        "return.restock.created",
        "return.shipment.created",
        "return.shipments.created",
        "return.shipment.provided",
        "return.shipments.provided",
        "return.shipment.recorded",
        "return.exchange.order.created",
    }
)
_STATUS: dict[str, EventType | None] = {
    "submitted": EventType.RETURN_REQUESTED,
    "approved": EventType.RETURN_APPROVED,
    "shipped": EventType.RETURN_IN_TRANSIT,
    "received": EventType.RETURN_RECEIVED,
    "rejected": EventType.RETURN_REJECTED,
    "done": EventType.RETURN_CLOSED,
    "expired": EventType.RETURN_EXPIRED,
}
# AfterShip tracking tags, most advanced first; the others say nothing about the return.
_TRACKING: dict[str, EventType | None] = {
    "delivered": EventType.RETURN_RECEIVED,
    "outfordelivery": EventType.RETURN_IN_TRANSIT,
    "intransit": EventType.RETURN_IN_TRANSIT,
    **dict.fromkeys(
        ("pending", "inforeceived", "attemptfail", "availableforpickup", "exception", "expired"), None
    ),
}
# A drop-off's status, most advanced first: dropped off at the collection point is the
# drop-off return's carrier scan. Only `created` (a QR code was generated) says nothing yet.
_DROPOFF: dict[str, EventType | None] = {
    "dropped": EventType.RETURN_IN_TRANSIT,
    "partially_dropped": EventType.RETURN_IN_TRANSIT,
    "created": None,
}
_DESTINATION = {"original_payment": Outcome.REFUND, "store_credit": Outcome.STORE_CREDIT}
_RESOLUTION = {**_DESTINATION, "exchange": Outcome.EXCHANGE}


def to_events(raw: RawWebhook) -> list[ReturnEvent]:
    return list(normalize(raw).events)


def normalize(raw: RawWebhook) -> Normalized:
    envelope = load_object(raw.body)
    event_name = required_text(envelope, "event")
    data = required_obj(envelope, "data")
    return_id = required_text(data, "id", "data")
    occurred_at = (
        time_field(envelope, "created_at") or time_field(data, "updated_at", "data") or raw.received_at
    )
    order = obj(data, "order", "data") or {}
    destination = _DESTINATION.get(text(data, "refund_destination", "data") or "")
    resolution = obj(data, "resolution", "data") or {}
    # What a returned item becomes unless it is exchanged: 2024-10 says where refunds go,
    # legacy says per return.
    refund_outcome = destination or _RESOLUTION.get(text(resolution, "type", "data.resolution") or "")
    lines = objects(data, "return_items", "data")
    items = tuple(_item(line, f"data.return_items[{i}]", refund_outcome) for i, line in enumerate(lines))
    total, total_currency = money_object(data, "return_total_including_tax", "data")
    refunded, refunded_currency = money_object(data, "refunded_total", "data")
    ctx = Context(
        SOURCE,
        tenant_of(raw),
        _customer(data, order),
        return_id,
        order_ref=text(order, "order_name", "data.order") or text(order, "order_number", "data.order"),
        currency=currency(total_currency or refunded_currency),
    )
    exchange_order = obj(data, "exchange_order", "data")
    outcome = outcome_of(
        o
        for o in (
            refund_outcome,
            *(Outcome.EXCHANGE for item in items if item.new_sku),
            Outcome.EXCHANGE if exchange_order is not None else None,
        )
        if o
    )
    status, status_raw, unknown = _status(event_name, data)
    events: list[ReturnEvent] = []
    if status is not None:
        event_id = text(envelope, "id")
        events.append(
            ctx.event(
                status,
                f"{SOURCE}:{event_id}"
                if event_id
                else snapshot_id(SOURCE, event_name, return_id, occurred_at, raw.body),
                occurred_at,
                status_raw=status_raw,
                outcome=outcome,
                amount=total,
                items=items,
            )
        )
    refunded_at = time_field(data, "refunded_at", "data") or time_field(data, "resolved_at", "data")
    if positive(refunded) is not None:
        credit = destination is Outcome.STORE_CREDIT
        events.append(
            ctx.event(
                EventType.STORE_CREDIT_ISSUED if credit else EventType.REFUND_ISSUED,
                fact_id(SOURCE, "store_credit" if credit else "refund", return_id),
                refunded_at or occurred_at,
                outcome=Outcome.STORE_CREDIT if credit else Outcome.REFUND,
                amount=refunded,
                currency=currency(refunded_currency),
            )
        )
    if exchange_order is not None:
        events.append(_exchange(ctx, exchange_order, items, occurred_at))
    skipped = Skip.NO_CHANGE if not events and unknown is None else None
    return Normalized(validated(events), unknown_status=unknown, skipped=skipped)


def _status(event_name: str, data: Json) -> tuple[EventType | None, str | None, str | None]:
    """(canonical status or None, the platform word that decided it, a word we cannot map)."""
    if event_name in _EVENT:
        return _EVENT[event_name], event_name, None
    if event_name in _NO_STATUS:
        return None, None, None
    if event_name in _BY_STATUS:
        return read_status(
            text(data, "approval_status", "data") or required_text(data, "status", "data"), _STATUS
        )
    if event_name in _BY_TRACKING or event_name in _BY_DROPOFF:
        return _parcel(event_name, data)
    return None, None, event_name


def _parcel(event_name: str, data: Json) -> tuple[EventType | None, str | None, str | None]:
    """How far the parcels got, unless the return itself is already further along."""
    found: tuple[EventType | None, str | None, str | None] = (None, None, None)
    if event_name in _BY_TRACKING:
        found = _progress(data, "shipments", "tracking_status", _TRACKING)
    if found[0] is None and event_name in _BY_DROPOFF:
        # A drop-off's own shipments carry no tracking status: its status says how far it got.
        dropoff = _progress(data, "dropoffs", "status", _DROPOFF)
        found = dropoff if dropoff[0] is not None else (None, None, found[2] or dropoff[2])
    status, word, unknown = found
    if status is not None and _rank(_snapshot_status(data)) > _rank(status):
        # A scan after the return was received, resolved, rejected or expired (merchants that
        # refund on the first scan see the rest later): it must not move the return back.
        return None, None, unknown
    return status, word, unknown


def _snapshot_status(data: Json) -> EventType | None:
    """The return's own status in a parcel event's snapshot, as far as it is known."""
    word = text(data, "approval_status", "data") or text(data, "status", "data")
    own = _STATUS.get(word.lower()) if word else None
    if objects(data, "receivings", "data") and _rank(own) < _rank(EventType.RETURN_RECEIVED):
        return EventType.RETURN_RECEIVED  # 2024-10 keeps `approved` until resolved
    return own


def _rank(status: EventType | None) -> int:
    return STATUS_RANK[status.status] if status is not None else -1


def _progress(
    data: Json, key: str, field: str, states: dict[str, EventType | None]
) -> tuple[EventType | None, str | None, str | None]:
    """The status of the most advanced of `data.<key>[].<field>` (parcels, drop-offs): a return
    is as far along as its furthest part. `states` lists the words most advanced first."""
    words = [text(entry, field, f"data.{key}[{i}]") for i, entry in enumerate(objects(data, key, "data"))]
    known = [w for w in words if w and w.lower() in states]
    unknown = next((w for w in words if w and w.lower() not in states), None)
    for tag, status in states.items():
        for word in known:
            if word.lower() == tag and status is not None:
                return status, word, unknown
    return None, None, unknown


def _customer(data: Json, order: Json) -> Customer:
    first_name, last_name = split_name(text(order, "customer_name", "data.order"))  # legacy
    found = customer(
        _order_email(order)
        or text(order, "customer_email", "data.order")  # legacy
        or text(data, "contact_email", "data"),
        first_name=first_name,
        last_name=last_name,
    )
    if found is None:
        raise RejectedInput(Reason.MISSING_FIELD, "data.order.customer.emails is required")
    return found


def _order_email(order: Json) -> str | None:
    # 2024-10 documents `customer` as `{"emails": [...]}` but shows a bare list as its example.
    raw_customer = order.get("customer")
    if isinstance(raw_customer, list):
        emails = [as_text(e, f"data.order.customer[{i}]") for i, e in enumerate(raw_customer)]
    else:
        holder = obj(order, "customer", "data.order") or {}
        emails = [
            *texts(holder, "emails", "data.order.customer"),
            text(holder, "email", "data.order.customer"),
        ]
    return next((email for email in emails if email), None)


def _item(line: Json, path: str, refund_outcome: Outcome | None) -> ReturnItem:
    value, _ = money_object(line, "discounted_price_including_tax", path)
    if value is None:
        value, _ = money_object(line, "price", path)  # legacy
    reason = line.get("return_reason")
    if isinstance(reason, dict):  # legacy ReturnReason object
        reason = reason.get("name")
    parent = as_text(reason, f"{path}.return_reason")
    sub = text(line, "return_subreason", path) or text(line, "subreason", path)
    exchange = obj(line, "exchange_variant", path) or {}
    new_sku = text(exchange, "sku", f"{path}.exchange_variant")
    count_key = "intended_return_quantity" if "intended_return_quantity" in line else "return_quantity"
    return ReturnItem(
        sku=text(line, "sku", path),
        product_name=text(line, "product_title", path) or text(line, "title", path),
        variant_name=text(line, "variant_title", path),
        quantity=quantity(line, count_key, f"{path}.{count_key}"),
        value=value,
        reason=sub or parent,
        reason_parent=parent if sub else None,
        outcome=Outcome.EXCHANGE.value if new_sku else (refund_outcome.value if refund_outcome else None),
        new_sku=new_sku,
    )


def _exchange(ctx: Context, order: Json, items: tuple[ReturnItem, ...], at: datetime) -> ReturnEvent:
    assert ctx.return_id is not None
    return ctx.event(
        EventType.EXCHANGE_CREATED,
        fact_id(SOURCE, "exchange", ctx.return_id),
        time_field(order, "created_at", "data.exchange_order") or at,
        outcome=Outcome.EXCHANGE,
        items=tuple(item for item in items if item.new_sku),
        new_order_ref=text(order, "order_name", "data.exchange_order")
        or text(order, "name", "data.exchange_order"),
    )
