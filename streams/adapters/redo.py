"""Redo (reference §2): `{type, at, return, order}`, the whole return on every delivery.

Money facts: one `store_credit.issued` per issued gift card (`giftCards[]`, in any status), and
once the return is `complete` one `refund.issued` and one `exchange.created` per item whose
refund / exchange the return settled. Item refunds are plans until then, so they are not facts.
"""

from __future__ import annotations

from dataclasses import replace
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
    tenant_of,
    validated,
)
from streams.adapters.payload import (
    Json,
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

SOURCE = "redo"

_STATUS: dict[str, EventType | None] = {
    "pre_shipment": EventType.RETURN_REQUESTED,
    "open": EventType.RETURN_APPROVED,
    "in_transit": EventType.RETURN_IN_TRANSIT,
    "delivered": EventType.RETURN_RECEIVED,
    "complete": EventType.RETURN_CLOSED,
    "rejected": EventType.RETURN_REJECTED,
    "deleted": EventType.RETURN_CANCELLED,
    # Review states can come before or after delivery; no canonical status says which, and
    # guessing one could move a received return back. Known, so not counted as unknown.
    "needs_review": None,
    "in_review": None,
    "flagged": None,
}
_COMPENSATION = {"refund": Outcome.REFUND, "store_credit": Outcome.STORE_CREDIT, "exchange": Outcome.EXCHANGE}
_REFUND_TYPE = {"original_payment": Outcome.REFUND, "store_credit": Outcome.STORE_CREDIT}


def to_events(raw: RawWebhook) -> list[ReturnEvent]:
    return list(normalize(raw).events)


def normalize(raw: RawWebhook) -> Normalized:
    body = load_object(raw.body)
    ret = required_obj(body, "return")
    return_id = required_text(ret, "id", "return")
    created_at = time_field(ret, "createdAt", "return")
    version = time_field(ret, "updatedAt", "return") or time_field(body, "at") or created_at
    occurred_at = version or raw.received_at
    lines = objects(ret, "items", "return")
    items = tuple(_item(line, f"return.items[{i}]") for i, line in enumerate(lines))
    gift_cards = objects(ret, "giftCards", "return")
    ctx = Context(
        SOURCE,
        tenant_of(raw),
        _customer(body, ret),
        return_id,
        order_ref=text(obj(ret, "order", "return") or {}, "name", "return.order"),
        currency=_currency(lines, gift_cards),
    )
    status, status_raw, unknown = read_status(required_text(ret, "status", "return"), _STATUS)
    methods = texts(ret, "compensationMethods", "return")
    outcome = outcome_of(_COMPENSATION[m] for m in methods if m in _COMPENSATION) or outcome_of(
        Outcome(item.outcome) for item in items if item.outcome
    )
    values = [item.value * item.quantity for item in items if item.value is not None]
    events = snapshot_status(
        ctx,
        status=status,
        status_raw=status_raw,
        event_id=snapshot_id(SOURCE, text(body, "type") or "return", return_id, version, raw.body),
        occurred_at=occurred_at,
        created_at=created_at or occurred_at,
        items=items,
        amount=sum(values, Decimal(0)) if values else None,
        outcome=outcome,
    )
    events += _gift_cards(ctx, gift_cards, occurred_at)
    if status is EventType.RETURN_CLOSED:
        events += _settled(ctx, lines, occurred_at)
    if text(body, "type") == "backfill":
        # Redo replays existing returns when a webhook is set up: history, so no flow may fire.
        events = [replace(event, backfill=True) for event in events]
    return Normalized(validated(events), unknown_status=unknown)


def _customer(body: Json, ret: Json) -> Customer:
    source = obj(ret, "source", "return") or {}
    name = obj(source, "name", "return.source") or {}
    # The original order's customer is the fallback when the return names no contact.
    order_customer = obj(obj(body, "order") or {}, "customer", "order") or {}
    found = customer(
        text(source, "emailAddress", "return.source") or text(order_customer, "email", "order.customer"),
        first_name=text(name, "given", "return.source.name"),
        last_name=text(name, "surname", "return.source.name"),
    )
    if found is None:
        raise RejectedInput(Reason.MISSING_FIELD, "return.source.emailAddress is required")
    return found


def _item(line: Json, path: str) -> ReturnItem:
    value, _ = money_object(line, "productValueNoTaxNoAdjustment", path)
    reasons = texts(line, "reasons", path)
    reason = text(line, "reason", path)
    exchange = obj(line, "exchangeItem", path)
    refund = obj(line, "refund", path) or {}
    outcome = Outcome.EXCHANGE if exchange else _REFUND_TYPE.get(text(refund, "type", f"{path}.refund") or "")
    return ReturnItem(
        sku=text(line, "sku", path),
        quantity=quantity(line, "quantity", path),
        value=value,
        reason=reason,
        # `reasons` is the path through Redo's reason tree; its head is the parent reason.
        reason_parent=reasons[0] if len(reasons) > 1 and reasons[0] != reason else None,
        outcome=outcome.value if outcome else None,
    )


def _currency(lines: list[Json], gift_cards: list[Json]) -> str | None:
    # Redo states currency on each money object, not on the return: take the first one named.
    for i, line in enumerate(lines):
        refund = obj(line, "refund", f"return.items[{i}]") or {}
        _, code = money_object(refund, "amount", f"return.items[{i}].refund")
        if code:
            return currency(code)
    for i, card in enumerate(gift_cards):
        _, code = money_object(card, "amount", f"return.giftCards[{i}]")
        if code:
            return currency(code)
    return None


def _gift_cards(ctx: Context, cards: list[Json], at: datetime) -> list[ReturnEvent]:
    assert ctx.return_id is not None
    events = []
    for i, card in enumerate(cards):
        path = f"return.giftCards[{i}]"
        amount, code = money_object(card, "amount", path)
        if positive(amount) is None:
            continue
        external_id = text(card, "externalId", path)
        # Never the card's `code`: it is redeemable, and ids end up in logs and in Klaviyo.
        key = ("gift_card", external_id) if external_id else (ctx.return_id, str(i))
        events.append(
            ctx.event(
                EventType.STORE_CREDIT_ISSUED,
                fact_id(SOURCE, "store_credit", *key),
                at,
                outcome=Outcome.STORE_CREDIT,
                amount=amount,
                currency=currency(code),
            )
        )
    return events


def _settled(ctx: Context, lines: list[Json], at: datetime) -> list[ReturnEvent]:
    assert ctx.return_id is not None
    events = []
    for i, line in enumerate(lines):
        path = f"return.items[{i}]"
        key = (ctx.return_id, text(line, "id", path) or str(i))
        refund = obj(line, "refund", path) or {}
        amount, code = money_object(refund, "amount", f"{path}.refund")
        # Store-credit refunds arrive as gift cards; counting them here too would double them.
        if positive(amount) is not None and text(refund, "type", f"{path}.refund") != "store_credit":
            events.append(
                ctx.event(
                    EventType.REFUND_ISSUED,
                    fact_id(SOURCE, "refund", *key),
                    at,
                    outcome=Outcome.REFUND,
                    amount=amount,
                    currency=currency(code),
                )
            )
        exchange = obj(line, "exchangeItem", path)
        if exchange is not None:
            events.append(
                ctx.event(
                    EventType.EXCHANGE_CREATED,
                    fact_id(SOURCE, "exchange", *key),
                    at,
                    outcome=Outcome.EXCHANGE,
                    items=(_exchange_item(exchange, f"{path}.exchangeItem"),),
                )
            )
    return events


def _exchange_item(exchange: Json, path: str) -> ReturnItem:
    product = obj(exchange, "product", path) or {}
    variant = obj(exchange, "variant", path) or {}
    return ReturnItem(
        product_name=text(product, "name", f"{path}.product"),
        variant_name=text(variant, "name", f"{path}.variant"),
        quantity=quantity(exchange, "quantity", path),
        outcome=Outcome.EXCHANGE.value,
        new_sku=text(variant, "sku", f"{path}.variant"),
    )
