"""Swap Commerce (reference §3): the v1 "return data" webhook, `{"return": {...}, "products": [...]}`.

Swap sends it on "Return created" and "Return processed"; the payload does not say which (the
field is unpublished), so the status comes from the return itself. Money facts are made once the
return is `Closed` (processed): `swap:refund:<return id>`, `swap:store_credit:<return id>`, and
`swap:exchange:<return id>:<product id>` per exchanged product. Amounts are JSON numbers here.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from streams.adapters.common import (
    Context,
    Normalized,
    customer,
    fact_id,
    outcome_of,
    read_status,
    snapshot_id,
    snapshot_status,
    split_name,
    tenant_of,
    validated,
)
from streams.adapters.payload import (
    Json,
    currency,
    load_object,
    money_field,
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
from streams.events import EventType, Outcome, ReturnEvent, ReturnItem
from streams.raw import RawWebhook

SOURCE = "swap"

_STATUS: dict[str, EventType | None] = {
    "open": EventType.RETURN_APPROVED,
    "closed": EventType.RETURN_CLOSED,
    "expired": EventType.RETURN_EXPIRED,
    "cancelled": EventType.RETURN_CANCELLED,
    # Holds whose place in the lifecycle Swap does not document: known, but no status change.
    "needs review": None,
    "on hold": None,
}
# While open, the shipping status says how far the parcel got.
_SHIPPING: dict[str, EventType | None] = {
    "pre-transit": None,
    "in-transit": EventType.RETURN_IN_TRANSIT,
    "delivered": EventType.RETURN_RECEIVED,
}
_TYPE: dict[str, Outcome | None] = {
    "refund": Outcome.REFUND,
    # "Shop Now" spends the credit on a new order at once: an exchange in all but name.
    "shop now credit": Outcome.EXCHANGE,
    "exchange": Outcome.EXCHANGE,
    "shop later credit": Outcome.STORE_CREDIT,
    "additional payment": None,
    "recycle": None,
    "warranty": None,
}


def to_events(raw: RawWebhook) -> list[ReturnEvent]:
    return list(normalize(raw).events)


def normalize(raw: RawWebhook) -> Normalized:
    body = load_object(raw.body)
    ret = required_obj(body, "return")
    return_id = required_text(ret, "return_id", "return")
    created_at = time_field(ret, "date_created", "return")
    version = time_field(ret, "date_updated", "return") or created_at
    occurred_at = version or raw.received_at
    first_name, last_name = split_name(text(ret, "customer_name", "return"))
    found = customer(text(ret, "customer_email", "return"), first_name=first_name, last_name=last_name)
    if found is None:
        raise RejectedInput(Reason.MISSING_FIELD, "return.customer_email is required")
    ctx = Context(
        SOURCE,
        tenant_of(raw),
        found,
        return_id,
        # `order_name` is Swap's own (e.g. SW-P022); the store's order name is the original's.
        order_ref=text(ret, "original_order_name", "return") or text(ret, "order_name", "return"),
        currency=currency(text(ret, "customer_currency", "return")),
    )
    # The products key is not visible in Swap's docs; top level per the reference, else nested.
    products = objects(body, "products") or objects(ret, "products", "return")
    items = tuple(_item(product, f"products[{i}]") for i, product in enumerate(products))
    status, status_raw, unknown = read_status(
        required_text(ret, "status", "return"), _STATUS, text(ret, "shipping_status", "return"), _SHIPPING
    )
    types = texts(ret, "type", "return") or (text(ret, "type_string", "return") or "").split(",")
    outcome = outcome_of(o for o in (_TYPE.get(t.strip().lower()) for t in types) if o)
    events = snapshot_status(
        ctx,
        status=status,
        status_raw=status_raw,
        event_id=snapshot_id(SOURCE, text(body, "event") or "return", return_id, version, raw.body),
        occurred_at=occurred_at,
        created_at=created_at or occurred_at,
        items=items,
        amount=money_field(ret, "total", "return"),
        outcome=outcome,
    )
    if status is EventType.RETURN_CLOSED:
        events += _settled(ctx, ret, products, items, occurred_at)
    return Normalized(validated(events), unknown_status=unknown)


def _item(product: Json, path: str) -> ReturnItem:
    main_reason = text(product, "main_reason_text", path)
    sub_reason = text(product, "sub_reason_text", path)
    outcome = _TYPE.get((text(product, "return_type", path) or "").lower())
    return ReturnItem(
        sku=text(product, "sku", path),
        product_name=text(product, "product_name", path),
        variant_name=text(product, "variant_name", path),
        quantity=quantity(product, "item_count", path),
        value=money_field(product, "cost", path),
        reason=sub_reason or main_reason,
        reason_parent=main_reason if sub_reason else None,
        outcome=outcome.value if outcome else None,
    )


def _settled(
    ctx: Context, ret: Json, products: list[Json], items: tuple[ReturnItem, ...], at: datetime
) -> list[ReturnEvent]:
    assert ctx.return_id is not None
    events = []

    def total(outcome: Outcome) -> Decimal | None:
        values = [item.value * item.quantity for item in items if item.outcome == outcome and item.value]
        return positive(sum(values, Decimal(0)))

    # The refund actually paid, when Swap states it; otherwise what the refunded products cost.
    refund = positive(money_field(ret, "total_refund_value_customer_currency", "return")) or total(
        Outcome.REFUND
    )
    if refund is not None:
        events.append(
            ctx.event(
                EventType.REFUND_ISSUED,
                fact_id(SOURCE, "refund", ctx.return_id),
                at,
                outcome=Outcome.REFUND,
                amount=refund,
            )
        )
    credit = total(Outcome.STORE_CREDIT)
    if credit is not None:
        events.append(
            ctx.event(
                EventType.STORE_CREDIT_ISSUED,
                fact_id(SOURCE, "store_credit", ctx.return_id),
                at,
                outcome=Outcome.STORE_CREDIT,
                amount=credit,
            )
        )
    for i, (product, item) in enumerate(zip(products, items, strict=True)):
        if item.outcome != Outcome.EXCHANGE:
            continue
        product_id = text(product, "product_id", f"products[{i}]") or str(i)
        events.append(
            ctx.event(
                EventType.EXCHANGE_CREATED,
                fact_id(SOURCE, "exchange", ctx.return_id, product_id),
                at,
                outcome=Outcome.EXCHANGE,
                amount=item.value * item.quantity if item.value is not None else None,
                items=(item,),
            )
        )
    return events
