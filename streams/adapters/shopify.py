"""Shopify (reference §4): one webhook per transition, the topic in `X-Shopify-Topic`.

`returns/*` and `refunds/create` never name the customer, so events for them are a join with
the order's customer, which `orders/create` (and `orders/updated`) name. The join is pure and
its state belongs to the caller:

1. `normalize(raw, customer_for_order)` on `orders/*` returns `Normalized(order_customer=...)`:
   store `order_customer.customer` under `order_customer.order_key`, then re-normalize every raw
   webhook parked under that key. `orders/create` also yields the order as `order.placed` (the
   return rate's denominator; `orders/updated` does not: an order is placed once).
2. On `returns/*` / `refunds/create` it calls `customer_for_order(order_key)`. A customer: the
   events are in `Normalized.events`. None: `Normalized(awaiting_order=order_key)` and no
   events; park the raw webhook under that key and normalize it again in step 1.

Payload errors are raised before the lookup, so nothing malformed is ever parked. Order keys
are `<tenant>/<Shopify order id>`. `to_events(raw, customer)` is the same for one known customer.

Event ids: `shopify:<X-Shopify-Event-Id>` for a return's transition (falling back to the
delivery id, then a hash); a refund is its own fact, `shopify:refund:<refund id>`; an order is
`shopify:order:<order id>`, so a re-sent `orders/create` is the same order (and the reducer counts
an order once per `order_ref` anyway). `occurred_at` is `X-Shopify-Triggered-At` (returns payloads
carry no time), the refund's `processed_at`/`created_at`, or the order's `created_at`.
"""

from __future__ import annotations

import re
from datetime import datetime
from decimal import Decimal

from streams.adapters.common import (
    Context,
    CustomerLookup,
    Normalized,
    OrderCustomer,
    Skip,
    customer,
    fact_id,
    snapshot_id,
    tenant_of,
    validated,
)
from streams.adapters.payload import (
    Json,
    currency,
    load_object,
    money_field,
    obj,
    objects,
    positive,
    quantity,
    required_obj,
    required_text,
    text,
    time,
    time_field,
)
from streams.errors import Reason, RejectedInput
from streams.events import Customer, EventType, Outcome, ReturnEvent, ReturnItem
from streams.raw import RawWebhook

SOURCE = "shopify"

_TOPIC = {
    "returns/request": EventType.RETURN_REQUESTED,
    "returns/approve": EventType.RETURN_APPROVED,
    "returns/decline": EventType.RETURN_REJECTED,
    "returns/cancel": EventType.RETURN_CANCELLED,
    "returns/close": EventType.RETURN_CLOSED,
    # Reopened means open again, i.e. approved; it is later than the close, so it wins by time.
    "returns/reopen": EventType.RETURN_APPROVED,
}
# For returns/* topics this module does not know (returns/process, returns/update, ...).
_STATUS = {
    "requested": EventType.RETURN_REQUESTED,
    "open": EventType.RETURN_APPROVED,
    "declined": EventType.RETURN_REJECTED,
    "canceled": EventType.RETURN_CANCELLED,
    "closed": EventType.RETURN_CLOSED,
}
_ORDER_TOPICS = frozenset({"orders/create", "orders/updated"})
_RETURN_NAME = re.compile(r"^(?P<order>.+)-R\d+$")


class AwaitingOrderCustomer(RejectedInput):
    """Raised by `to_events` without a customer: a caller that does not join dead-letters it
    (replayable once the order is known) instead of losing it."""

    def __init__(self, order_key: str) -> None:
        super().__init__(Reason.MISSING_FIELD, f"shopify order {order_key} has no known customer yet")
        self.order_key = order_key


def order_key(tenant: str, order_id: str) -> str:
    return f"{tenant}/{order_id}"


def to_events(raw: RawWebhook, customer: Customer | None = None) -> list[ReturnEvent]:
    result = normalize(raw, lambda _key: customer)
    if result.awaiting_order is not None:
        raise AwaitingOrderCustomer(result.awaiting_order)
    return list(result.events)


def normalize(raw: RawWebhook, customer_for_order: CustomerLookup | None = None) -> Normalized:
    topic = raw.headers.get("x-shopify-topic", "").strip()
    if not topic:
        raise RejectedInput(Reason.MISSING_FIELD, "X-Shopify-Topic header is required")
    body = load_object(raw.body)
    lookup = customer_for_order or (lambda _key: None)
    if topic in _ORDER_TOPICS:
        return _order(raw, body, placed=topic == "orders/create")
    if topic.startswith("returns/"):
        return _return(raw, body, topic, lookup)
    if topic == "refunds/create":
        return _refund(raw, body, lookup)
    raise RejectedInput(Reason.UNSUPPORTED_PAYLOAD, f"shopify topic {topic!r} is not supported")


def _order(raw: RawWebhook, body: Json, *, placed: bool) -> Normalized:
    order_id = required_text(body, "id")
    buyer = obj(body, "customer") or {}
    found = customer(
        text(body, "email") or text(body, "contact_email") or text(buyer, "email", "customer"),
        first_name=text(buyer, "first_name", "customer"),
        last_name=text(buyer, "last_name", "customer"),
        external_id=text(buyer, "id", "customer"),
    )
    if found is None:
        # A POS or draft order without an email: its returns will wait, then dead-letter.
        return Normalized(skipped=Skip.NO_CUSTOMER)
    joined = OrderCustomer(order_key(tenant_of(raw), order_id), found)
    if not placed:
        return Normalized(order_customer=joined)
    try:
        events = validated([_placed(raw, body, found, order_id)])
    except RejectedInput:
        # The join matters more than the count: its returns must still find their customer.
        return Normalized(order_customer=joined, skipped=Skip.ORDER_NOT_COUNTED)
    return Normalized(events, order_customer=joined)


def _placed(raw: RawWebhook, body: Json, found: Customer, order_id: str) -> ReturnEvent:
    """The order as the customer paid it: the total in presentment money (the currency its refunds
    come back in), the units of its lines, and its name, which its returns' names start with."""
    total = obj(body, "total_price_set")
    paid = obj(total, "presentment_money", "total_price_set") if total else None
    if paid is not None:
        amount = money_field(paid, "amount", "total_price_set.presentment_money")
        code = text(paid, "currency_code", "total_price_set.presentment_money")
    else:
        amount, code = money_field(body, "total_price"), text(body, "currency")
    lines = objects(body, "line_items")
    units = sum(quantity(line, "quantity", f"line_items[{i}]") for i, line in enumerate(lines))
    ctx = Context(SOURCE, tenant_of(raw), found, None, order_ref=text(body, "name") or order_id)
    return ctx.event(
        EventType.ORDER_PLACED,
        fact_id(SOURCE, "order", order_id),
        time_field(body, "created_at") or _triggered_at(raw),
        amount=amount,
        currency=currency(code),
        item_count=units,
    )


def _return(raw: RawWebhook, body: Json, topic: str, lookup: CustomerLookup) -> Normalized:
    return_id = required_text(body, "id")
    order_id = required_text(required_obj(body, "order"), "id", "order")
    status_raw = text(body, "status")
    status = _TOPIC.get(topic) or _STATUS.get((status_raw or "").lower())
    unknown = None if status is not None else (status_raw or topic)
    items = tuple(
        _return_item(line, f"return_line_items[{i}]")
        for i, line in enumerate(objects(body, "return_line_items"))
    )
    exchanges = objects(body, "exchange_line_items")
    occurred_at = _triggered_at(raw)
    name = text(body, "name")
    match = _RETURN_NAME.match(name or "")
    key = order_key(tenant_of(raw), order_id)
    found = lookup(key)
    if found is None:
        return Normalized(awaiting_order=key)
    # A return's name is its order's name plus `-R<n>` ("#1106-R2"): the order ref for free.
    ctx = Context(SOURCE, tenant_of(raw), found, return_id, order_ref=match["order"] if match else None)
    events = []
    if status is not None:
        event_id = _event_id(raw, topic, return_id, occurred_at)
        events.append(ctx.event(status, event_id, occurred_at, status_raw=status_raw, items=items))
    if status is EventType.RETURN_CLOSED and exchanges:
        # Shopify fulfils a return's exchange items when the return is closed (processed).
        exchange_id = fact_id(SOURCE, "exchange", return_id)
        events.append(
            ctx.event(EventType.EXCHANGE_CREATED, exchange_id, occurred_at, outcome=Outcome.EXCHANGE)
        )
    return Normalized(validated(events), unknown_status=unknown)


def _refund(raw: RawWebhook, body: Json, lookup: CustomerLookup) -> Normalized:
    refund_id = required_text(body, "id")
    order_id = required_text(body, "order_id")
    linked = obj(body, "return")
    return_id = text(linked, "id", "return") if linked else None
    amount, code = _refunded(objects(body, "transactions"))
    lines = objects(body, "refund_line_items")
    items = tuple(_refund_item(line, f"refund_line_items[{i}]") for i, line in enumerate(lines))
    occurred_at = time_field(body, "processed_at") or time_field(body, "created_at") or _triggered_at(raw)
    if return_id is None:
        return Normalized(skipped=Skip.NOT_A_RETURN)
    if amount is None:
        return Normalized(skipped=Skip.NO_CHANGE)  # a restock-only refund moves no money
    key = order_key(tenant_of(raw), order_id)
    found = lookup(key)
    if found is None:
        return Normalized(awaiting_order=key)
    ctx = Context(SOURCE, tenant_of(raw), found, return_id, currency=currency(code))
    event = ctx.event(
        EventType.REFUND_ISSUED,
        fact_id(SOURCE, "refund", refund_id),
        occurred_at,
        outcome=Outcome.REFUND,
        amount=amount,
        items=items,
    )
    return Normalized(validated([event]))


def _refunded(transactions: list[Json]) -> tuple[Decimal | None, str | None]:
    """Money that left: successful refund transactions (failed and pending ones did not pay)."""
    total, code = Decimal(0), None
    for i, transaction in enumerate(transactions):
        path = f"transactions[{i}]"
        if text(transaction, "kind", path) != "refund":
            continue
        if (text(transaction, "status", path) or "success") != "success":
            continue
        total += money_field(transaction, "amount", path) or Decimal(0)
        code = code or text(transaction, "currency", path)
    return positive(total), code


def _return_item(line: Json, path: str) -> ReturnItem:
    # Return line items name no product: only a quantity and a reason (code) per line.
    return ReturnItem(
        quantity=quantity(line, "quantity", path),
        reason=text(line, "return_reason", path),
    )


def _refund_item(line: Json, path: str) -> ReturnItem:
    product = obj(line, "line_item", path) or {}
    return ReturnItem(
        sku=text(product, "sku", f"{path}.line_item"),
        product_name=text(product, "title", f"{path}.line_item"),
        variant_name=text(product, "variant_title", f"{path}.line_item"),
        quantity=quantity(line, "quantity", path),
        value=money_field(product, "price", f"{path}.line_item"),
        outcome=Outcome.REFUND.value,
    )


def _triggered_at(raw: RawWebhook) -> datetime:
    return time(raw.headers.get("x-shopify-triggered-at"), "X-Shopify-Triggered-At") or raw.received_at


def _event_id(raw: RawWebhook, topic: str, return_id: str, occurred_at: datetime) -> str:
    if event_id := raw.headers.get("x-shopify-event-id", "").strip():
        return f"{SOURCE}:{event_id}"
    if webhook_id := raw.headers.get("x-shopify-webhook-id", "").strip():
        return f"{SOURCE}:webhook:{webhook_id}"
    return snapshot_id(SOURCE, topic, return_id, occurred_at, raw.body)
