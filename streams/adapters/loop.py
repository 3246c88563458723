"""Loop Returns (reference §1): the `return` topic sends the whole return every time.

A snapshot yields the return's status plus its money facts under stable ids:
`loop:refund:<provider_refund_id>` per entry of `refunds[]` (a transaction that happened, so in
any state), and once the return is `closed` (processed) `loop:exchange:<exchange_id>` per
exchange and `loop:store_credit:<return id>` for the gift card. The `giftcard` topic reports the
same credit under the same id, so subscribing to both counts it once.

Topics that never name the customer (label, restock, label.request, happy.returns.shipment,
return.processing) are skipped, not dead-lettered: label progress still arrives through the
return snapshot's `label_status`.
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
    snapshot_status,
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
    required_text,
    text,
    time_field,
)
from streams.errors import Reason, RejectedInput
from streams.events import Customer, EventType, Outcome, ReturnEvent, ReturnItem
from streams.raw import RawWebhook

SOURCE = "loop"

_STATE: dict[str, EventType | None] = {
    "open": EventType.RETURN_APPROVED,
    "closed": EventType.RETURN_CLOSED,
    "cancelled": EventType.RETURN_CANCELLED,
    "expired": EventType.RETURN_EXPIRED,
    # Loop holds flagged returns in review before accepting them: not yet approved.
    "review": EventType.RETURN_REQUESTED,
    "needs review": EventType.RETURN_REQUESTED,
    "needs_review": EventType.RETURN_REQUESTED,
}
# While a return is open its label says how far the parcel got (EasyPost's words); None: no further.
_LABEL: dict[str, EventType | None] = {
    "in_transit": EventType.RETURN_IN_TRANSIT,
    "out_for_delivery": EventType.RETURN_IN_TRANSIT,
    "delivered": EventType.RETURN_RECEIVED,
    **dict.fromkeys(("n/a", "new", "pending", "pre_transit", "error", "failure"), None),
}
_ITEM_OUTCOME = {
    "refund": Outcome.REFUND,
    "exchange": Outcome.EXCHANGE,
    "store_credit": Outcome.STORE_CREDIT,
    "gift_card": Outcome.STORE_CREDIT,
    "credit": Outcome.STORE_CREDIT,
}
# Every trigger is its topic plus a verb (`label.request.issued`), except Happy Returns'.
_TRIGGER_TOPIC_EXCEPTIONS = {"shipment.processed": "happy.returns.shipment"}
_NO_CUSTOMER_TOPICS = frozenset(
    {"label", "restock", "label.request", "happy.returns.shipment", "return.processing"}
)


def to_events(raw: RawWebhook) -> list[ReturnEvent]:
    return list(normalize(raw).events)


def normalize(raw: RawWebhook) -> Normalized:
    body = load_object(raw.body)
    if not body:
        # Loop's documented answer to a topic/trigger pair that does not fit.
        return Normalized(skipped=Skip.EMPTY_PAYLOAD)
    trigger = text(body, "trigger")
    topic = text(body, "topic") or _topic_of(trigger)
    if topic is None:
        raise RejectedInput(Reason.MISSING_FIELD, "topic (or a known trigger) is required")
    if topic == "return":
        return _return(raw, body, trigger or topic)
    if topic == "giftcard":
        return _gift_card(raw, body, trigger or topic)
    if topic in _NO_CUSTOMER_TOPICS:
        return Normalized(skipped=Skip.NO_CUSTOMER)
    raise RejectedInput(Reason.UNSUPPORTED_PAYLOAD, f"loop topic {topic!r} is not supported")


def _topic_of(trigger: str | None) -> str | None:
    if trigger is None or "." not in trigger:
        return None
    return _TRIGGER_TOPIC_EXCEPTIONS.get(trigger) or trigger.rsplit(".", 1)[0]


def _return(raw: RawWebhook, body: Json, trigger: str) -> Normalized:
    return_id = required_text(body, "id")
    labels = objects(body, "labels")
    created_at = time_field(body, "created_at")
    times = [
        created_at,
        time_field(body, "edited_at"),
        time_field(body, "label_updated_at"),
        *(time_field(label, "updated_at", f"labels[{i}]") for i, label in enumerate(labels)),
    ]
    # The snapshot's version: its newest timestamp (a label scan updates no `edited_at`).
    version = max((t for t in times if t is not None), default=None)
    occurred_at = version or raw.received_at
    ctx = Context(
        SOURCE,
        tenant_of(raw),
        _customer(body),
        return_id,
        order_ref=text(body, "order_name"),
        currency=currency(text(body, "currency")),
    )
    label_status = text(body, "label_status")
    if label_status is None and labels:
        label_status = text(labels[-1], "status", f"labels[{len(labels) - 1}]")
    state = required_text(body, "state")
    status, status_raw, unknown = read_status(state, _STATE, label_status, _LABEL)

    exchanges = objects(body, "exchanges")
    new_skus = {
        text(exchange, "variant_id", f"exchanges[{i}]"): text(exchange, "sku", f"exchanges[{i}]")
        for i, exchange in enumerate(exchanges)
    }
    items = tuple(
        _item(line, f"line_items[{i}]", new_skus) for i, line in enumerate(objects(body, "line_items"))
    )
    refunds = objects(body, "refunds")
    gift_card = positive(money_field(body, "gift_card"))
    planned_refund = positive(money_field(body, "refund"))
    outcome = outcome_of(
        [Outcome.EXCHANGE] * bool(exchanges)
        + [Outcome.REFUND] * bool(refunds or planned_refund)
        + [Outcome.STORE_CREDIT] * bool(gift_card)
    )
    amount = money_field(body, "return_total")
    events = snapshot_status(
        ctx,
        status=status,
        status_raw=status_raw,
        event_id=snapshot_id(SOURCE, trigger, return_id, version, raw.body),
        occurred_at=occurred_at,
        created_at=created_at or occurred_at,
        items=items,
        amount=amount if amount is not None else money_field(body, "total"),
        outcome=outcome,
    )
    events += _refunds(ctx, refunds, occurred_at)
    if status is EventType.RETURN_CLOSED:
        # Exchange orders and gift cards are made when Loop processes (closes) the return.
        events += _exchanges(ctx, exchanges, occurred_at)
        if gift_card is not None:
            credit = EventType.STORE_CREDIT_ISSUED, fact_id(SOURCE, "store_credit", return_id), occurred_at
            events.append(ctx.event(*credit, outcome=Outcome.STORE_CREDIT, amount=gift_card))
    return Normalized(validated(events), unknown_status=unknown)


def _customer(body: Json) -> Customer:
    detail = obj(body, "customer_detail") or {}
    found = customer(
        text(detail, "email", "customer_detail") or text(body, "customer"),
        first_name=text(detail, "first_name", "customer_detail"),
        last_name=text(detail, "last_name", "customer_detail"),
    )
    if found is None:
        raise RejectedInput(Reason.MISSING_FIELD, "customer_detail.email (or customer) is required")
    return found


def _item(line: Json, path: str, new_skus: dict[str | None, str | None]) -> ReturnItem:
    # Loop has no quantity: every returned unit is its own line item (reference §1.4).
    exchange_variant = text(line, "exchange_variant", path)
    raw_outcome = (text(line, "outcome", path) or "").lower()
    refund = positive(money_field(line, "refund", path))
    outcome = (
        Outcome.EXCHANGE
        if exchange_variant
        else _ITEM_OUTCOME.get(raw_outcome) or (Outcome.REFUND if refund else None)
    )
    return ReturnItem(
        sku=text(line, "sku", path),
        product_name=text(line, "title", path),
        variant_name=text(line, "variant_title", path),
        value=money_field(line, "price", path),
        reason=text(line, "return_reason", path),
        reason_parent=text(line, "parent_return_reason", path),
        outcome=outcome.value if outcome else None,
        new_sku=new_skus.get(exchange_variant) if exchange_variant else None,
    )


def _refunds(ctx: Context, refunds: list[Json], at: datetime) -> list[ReturnEvent]:
    assert ctx.return_id is not None
    events = []
    for i, refund in enumerate(refunds):
        amount = positive(money_field(refund, "amount", f"refunds[{i}]"))
        if amount is None:
            continue  # a zero line moved no money
        provider_id = text(refund, "provider_refund_id", f"refunds[{i}]")
        # Without a provider id, its position: Loop appends refunds, never reorders them.
        key = (provider_id,) if provider_id else (ctx.return_id, str(i))
        events.append(
            ctx.event(
                EventType.REFUND_ISSUED,
                fact_id(SOURCE, "refund", *key),
                at,
                outcome=Outcome.REFUND,
                amount=amount,
                currency=currency(text(refund, "currency", f"refunds[{i}]")),
            )
        )
    return events


def _exchanges(ctx: Context, exchanges: list[Json], at: datetime) -> list[ReturnEvent]:
    assert ctx.return_id is not None
    events = []
    for i, exchange in enumerate(exchanges):
        path = f"exchanges[{i}]"
        exchange_id = text(exchange, "exchange_id", path)
        key = (exchange_id,) if exchange_id else (ctx.return_id, str(i))
        new_item = ReturnItem(
            product_name=text(exchange, "title", path),
            value=money_field(exchange, "price", path),
            outcome=Outcome.EXCHANGE.value,
            new_sku=text(exchange, "sku", path),
        )
        events.append(
            ctx.event(
                EventType.EXCHANGE_CREATED,
                fact_id(SOURCE, "exchange", *key),
                at,
                outcome=Outcome.EXCHANGE,
                amount=money_field(exchange, "total", path),
                items=(new_item,),
            )
        )
    return events


def _gift_card(raw: RawWebhook, body: Json, trigger: str) -> Normalized:
    found = customer(
        text(body, "email"),
        first_name=text(body, "first_name"),
        last_name=text(body, "last_name"),
    )
    if found is None:
        raise RejectedInput(Reason.MISSING_FIELD, "email is required")
    amount = positive(money_field(body, "total_credit_issued"))
    if amount is None:
        return Normalized(skipped=Skip.NO_CHANGE)
    return_id = text(body, "return_id")
    card_id = text(body, "id")
    if return_id:
        # The id the return snapshot gives its gift card, so the two count once.
        event_id = fact_id(SOURCE, "store_credit", return_id)
    elif card_id:
        event_id = fact_id(SOURCE, "store_credit", "gift_card", card_id)
    else:  # an automatic out-of-stock gift card with neither id
        event_id = snapshot_id(SOURCE, trigger, "", None, raw.body)
    ctx = Context(
        SOURCE,
        tenant_of(raw),
        found,
        return_id,
        order_ref=text(body, "external_order_name"),
        currency=currency(text(body, "currency")),
    )
    # The payload carries no time at all: receipt is the closest known to the issue.
    event = ctx.event(
        EventType.STORE_CREDIT_ISSUED, event_id, raw.received_at, outcome=Outcome.STORE_CREDIT, amount=amount
    )
    return Normalized(validated([event]))
