"""The canonical return event (SPEC §3): one fact about one customer's return, or (`order.placed`)
one order they placed, which returns are measured against."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from functools import lru_cache
from typing import Any

from streams.errors import Reason, RejectedInput


class EventType(StrEnum):
    RETURN_REQUESTED = "return.requested"
    RETURN_APPROVED = "return.approved"
    RETURN_REJECTED = "return.rejected"
    RETURN_CANCELLED = "return.cancelled"
    RETURN_EXPIRED = "return.expired"
    RETURN_IN_TRANSIT = "return.in_transit"
    RETURN_RECEIVED = "return.received"
    RETURN_CLOSED = "return.closed"
    REFUND_ISSUED = "refund.issued"
    EXCHANGE_CREATED = "exchange.created"
    STORE_CREDIT_ISSUED = "store_credit.issued"
    STORE_CREDIT_REDEEMED = "store_credit.redeemed"
    ITEM_RESTOCKED = "item.restocked"
    ORDER_PLACED = "order.placed"
    """Not a return fact: the denominator of the return rate. It changes properties only (no
    Klaviyo event: the store already sends Placed Order) and never opens or closes a return."""

    @property
    def is_status(self) -> bool:
        """A `return.*` event moves a return's status; the others are facts beside it."""
        return self.value.startswith("return.")

    @property
    def status(self) -> str:
        """The canonical status word a `return.*` event moves to (`in_transit`, `closed` ...)."""
        return self.value.removeprefix("return.")


class Outcome(StrEnum):
    REFUND = "refund"
    EXCHANGE = "exchange"
    STORE_CREDIT = "store_credit"
    MIXED = "mixed"


SOURCES = frozenset({"loop", "redo", "swap", "shopify", "aftership", "api"})
DEFAULT_TENANT = "default"

# Klaviyo rejects emails of 100 characters or more; refusing them here keeps them out of state.
_MAX_EMAIL = 99
# Item events use `<event_id>:<n>` as Klaviyo unique_id, which Klaviyo caps at 255 characters.
_MAX_EVENT_ID = 240
# Klaviyo's email rule as its sandbox encodes it (klaviyo_sandbox/rules.py): one @, a local part
# without spaces, quotes, brackets or separators, a dotted domain of letters, digits and hyphens.
# ASCII only: Klaviyo refuses internationalised addresses (`jösé@exämple.com`), local part or
# domain; an IDN domain is accepted in its ASCII `xn--` form. Applied to the normalised (lower
# case) address, so plus-addressing, subdomains and upper case stay valid.
_EMAIL = re.compile(
    r"^[^@\s\"<>()\[\],;:\\\x00-\x1f\x7f]+@[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9-]+)+$"
)
# Klaviyo takes event times from 2000-01-01 (the stricter of its documented bounds) to one year
# ahead of its clock; anything outside is refused for good (klaviyo-api.md §3.1).
EARLIEST_EVENT_TIME = datetime(2000, 1, 1, tzinfo=UTC)
KLAVIYO_MAX_AHEAD = timedelta(days=365)
DEFAULT_MAX_FUTURE_SKEW = timedelta(hours=1)
"""How far past its ingestion time an event may be dated: clock skew between a platform and us,
never more. A later date would pin its return's status (older real updates lose to it)."""
# Far above any real return line, far below where the 64-bit integers Klaviyo takes overflow.
_MAX_QUANTITY = 1_000_000
TENANT_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_CURRENCY = re.compile(r"^[A-Z]{3}$")
# Far above any real return, far below where Decimal sums overflow (1E+1000000 raises in the reducer).
_MAX_MONEY = Decimal(10) ** 15


@dataclass(frozen=True, slots=True)
class Customer:
    email: str
    external_id: str | None = None
    first_name: str | None = None
    last_name: str | None = None


@dataclass(frozen=True, slots=True)
class ReturnItem:
    sku: str | None = None
    product_name: str | None = None
    variant_name: str | None = None
    quantity: int = 1
    value: Decimal | None = None
    reason: str | None = None
    reason_parent: str | None = None
    outcome: str | None = None
    new_sku: str | None = None


@dataclass(frozen=True, slots=True)
class ReturnEvent:
    event_id: str
    type: EventType
    occurred_at: datetime
    customer: Customer
    tenant: str = DEFAULT_TENANT
    source: str = "api"
    return_id: str | None = None
    order_ref: str | None = None
    status_raw: str | None = None
    outcome: Outcome | None = None
    amount: Decimal | None = None
    currency: str | None = None
    items: tuple[ReturnItem, ...] = field(default_factory=tuple)
    new_order_ref: str | None = None
    item_count: int | None = None
    """`order.placed`: units ordered (a return's units are its items' quantities)."""
    backfill: bool = False
    """History, not news (a platform's backfill, an export): Klaviyo gets it with `backfill:
    true`, so no flow fires for a return that happened long ago."""

    @property
    def customer_key(self) -> str:
        return customer_key(self.tenant, self.customer.email)


def customer_key(tenant: str, email: str) -> str:
    """The partition key and table key of one customer: `<tenant>/<normalised email>`."""
    return f"{tenant}/{normalise_email(email)}"


def customer_ref(key: str) -> str:
    """A short stable hash of a customer key: correlates logs without writing the email."""
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def normalise_email(email: str) -> str:
    return email.strip().lower()


# ---------------------------------------------------------------------------------------------
# Parsing: a JSON object from a producer into a ReturnEvent, or a RejectedInput with a reason.


def event_from_dict(obj: Any) -> ReturnEvent:
    """Validate one canonical event object. Unknown fields are ignored.

    Only what the object alone decides: where an event is ingested, `check_time` is applied with
    the ingestion time, so decoding a record already accepted never depends on a clock.
    """
    if not isinstance(obj, Mapping):
        raise RejectedInput(Reason.NOT_AN_OBJECT, f"expected a JSON object, got {type(obj).__name__}")
    event_id = _required_str(obj, "event_id")
    if len(event_id) > _MAX_EVENT_ID:
        raise RejectedInput(Reason.INVALID_FIELD, f"event_id longer than {_MAX_EVENT_ID} characters")
    raw_type = _required_str(obj, "type")
    try:
        event_type = EventType(raw_type)
    except ValueError:
        raise RejectedInput(Reason.UNKNOWN_TYPE, f"type {raw_type!r} is not a canonical type") from None
    tenant = _optional_str(obj, "tenant") or DEFAULT_TENANT
    if not TENANT_PATTERN.match(tenant):
        raise RejectedInput(Reason.INVALID_FIELD, "tenant must be 1-64 of [A-Za-z0-9_.-]")
    source = _optional_str(obj, "source") or "api"
    if source not in SOURCES:
        raise RejectedInput(Reason.UNKNOWN_SOURCE, f"source {source!r} is not one of {sorted(SOURCES)}")
    return_id = _optional_str(obj, "return_id")
    if event_type.is_status and not return_id:
        raise RejectedInput(Reason.MISSING_FIELD, f"return_id is required for {event_type.value}")
    raw_outcome = _optional_str(obj, "outcome")
    try:
        outcome = Outcome(raw_outcome) if raw_outcome else None
    except ValueError:
        raise RejectedInput(Reason.INVALID_FIELD, f"outcome {raw_outcome!r} is not known") from None
    currency = _optional_str(obj, "currency")
    if currency is not None and not _CURRENCY.match(currency):
        raise RejectedInput(Reason.INVALID_FIELD, "currency must be an ISO 4217 code like USD")
    amount = parse_money(obj.get("amount"), "amount")
    item_count = _count(obj, "item_count")
    order_ref = _optional_str(obj, "order_ref")
    if event_type is EventType.ORDER_PLACED:
        given = {"order_ref": order_ref, "amount": amount, "currency": currency, "item_count": item_count}
        if missing := [name for name, value in given.items() if value is None]:
            raise RejectedInput(Reason.MISSING_FIELD, f"{', '.join(missing)} required for order.placed "
                                "(an order counts once per order_ref; amount and currency make net spend)")
    return ReturnEvent(
        event_id=event_id,
        type=event_type,
        occurred_at=parse_time(obj.get("occurred_at"), "occurred_at"),
        customer=_customer(obj.get("customer")),
        tenant=tenant,
        source=source,
        return_id=return_id,
        order_ref=order_ref,
        status_raw=_optional_str(obj, "status_raw"),
        outcome=outcome,
        amount=amount,
        currency=currency,
        items=_items(obj.get("items")),
        new_order_ref=_optional_str(obj, "new_order_ref"),
        item_count=item_count,
        backfill=_flag(obj, "backfill"),
    )


def check_time(
    event: ReturnEvent, *, now: datetime, max_future_skew: timedelta = DEFAULT_MAX_FUTURE_SKEW
) -> ReturnEvent:
    """The event, if Klaviyo can take its time and it is not dated after `now` + the skew.

    Pure: `now` is the ingestion time the caller can reproduce (the request time at the HTTP
    edge, the Kafka record's timestamp in the state agent, the webhook's `received_at` in
    normalize), so a replay decides exactly as the first run did. An event dated too far ahead
    would win every status race of its return for good, and Klaviyo would refuse its timeline
    entry; one before 2000 Klaviyo refuses outright.
    """
    if event.occurred_at < EARLIEST_EVENT_TIME:
        raise RejectedInput(Reason.TIME_OUT_OF_RANGE,
                            f"occurred_at {format_time(event.occurred_at)} is before 2000-01-01, "
                            "which Klaviyo does not accept")
    latest = now + min(max_future_skew, KLAVIYO_MAX_AHEAD)
    if event.occurred_at > latest:
        raise RejectedInput(Reason.FUTURE_TIME,
                            f"occurred_at {format_time(event.occurred_at)} is more than "
                            f"{_duration(max_future_skew)} after it was received "
                            f"({format_time(now)})")
    return event


def _duration(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    if seconds % 3600 == 0:
        return f"{seconds // 3600} h"
    return f"{seconds} s"


def event_to_dict(event: ReturnEvent) -> dict[str, Any]:
    """The wire form: money as decimal text, times as RFC 3339 UTC, absent fields left out."""
    out: dict[str, Any] = {
        "event_id": event.event_id,
        "tenant": event.tenant,
        "source": event.source,
        "type": event.type.value,
        "occurred_at": format_time(event.occurred_at),
        "customer": _drop_none(
            {
                "email": event.customer.email,
                "external_id": event.customer.external_id,
                "first_name": event.customer.first_name,
                "last_name": event.customer.last_name,
            }
        ),
    }
    optional = {
        "return_id": event.return_id,
        "order_ref": event.order_ref,
        "status_raw": event.status_raw,
        "outcome": event.outcome.value if event.outcome else None,
        "amount": str(event.amount) if event.amount is not None else None,
        "currency": event.currency,
        "new_order_ref": event.new_order_ref,
        "item_count": event.item_count,
    }
    out.update(_drop_none(optional))
    if event.items:
        out["items"] = [_item_to_dict(item) for item in event.items]
    if event.backfill:
        out["backfill"] = True
    return out


def _item_to_dict(item: ReturnItem) -> dict[str, Any]:
    return _drop_none(
        {
            "sku": item.sku,
            "product_name": item.product_name,
            "variant_name": item.variant_name,
            "quantity": item.quantity,
            "value": str(item.value) if item.value is not None else None,
            "reason": item.reason,
            "reason_parent": item.reason_parent,
            "outcome": item.outcome,
            "new_sku": item.new_sku,
        }
    )


def parse_time(value: Any, name: str) -> datetime:
    """RFC 3339 with an explicit offset, returned in UTC. A naive time is refused, not guessed."""
    if value is None:
        raise RejectedInput(Reason.MISSING_FIELD, f"{name} is required")
    if not isinstance(value, str):
        raise RejectedInput(Reason.INVALID_FIELD, f"{name} must be an RFC 3339 string")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise RejectedInput(Reason.INVALID_FIELD, f"{name} is not an RFC 3339 time") from None
    if parsed.tzinfo is None:
        raise RejectedInput(Reason.INVALID_FIELD, f"{name} has no timezone offset")
    try:
        return parsed.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00:00+01:00 is before datetime.min in UTC
        raise RejectedInput(Reason.INVALID_FIELD, f"{name} is out of range") from None


@lru_cache(maxsize=32_768)  # a state re-encodes the same stamps on every event of its customer
def format_time(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse_money(value: Any, name: str) -> Decimal | None:
    """Decimal text (or a JSON integer) into a non-negative finite Decimal."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise RejectedInput(Reason.INVALID_FIELD, f"{name} must be decimal text like \"12.50\"")
    try:
        # str() first: Decimal(0.1) would carry the float's binary error into money.
        amount = Decimal(str(value).strip())
    except InvalidOperation:
        raise RejectedInput(Reason.INVALID_FIELD, f"{name} {value!r} is not a decimal") from None
    if not amount.is_finite() or amount < 0 or amount >= _MAX_MONEY:
        raise RejectedInput(Reason.INVALID_FIELD, f"{name} must be a finite amount >= 0 and < 10^15")
    return amount


def _customer(value: Any) -> Customer:
    if value is None:
        raise RejectedInput(Reason.MISSING_FIELD, "customer object with an email is required")
    if not isinstance(value, Mapping):
        raise RejectedInput(Reason.INVALID_FIELD, "customer must be an object with an email")
    raw_email = value.get("email")
    if raw_email is not None and not isinstance(raw_email, str):
        raise RejectedInput(Reason.INVALID_FIELD, "customer.email must be a string")
    if raw_email is None or not raw_email.strip():
        raise RejectedInput(Reason.MISSING_FIELD, "customer.email is required")
    email = normalise_email(raw_email)
    if len(email) > _MAX_EMAIL:
        raise RejectedInput(Reason.INVALID_FIELD,
                            f"customer.email is longer than {_MAX_EMAIL} characters (Klaviyo's limit)")
    if not email.isascii():
        raise RejectedInput(Reason.INVALID_FIELD,
                            "customer.email has non-ASCII characters, which Klaviyo does not accept")
    if not _EMAIL.match(email):
        raise RejectedInput(Reason.INVALID_FIELD, "customer.email is not a valid email address")
    return Customer(
        email=email,
        external_id=_optional_str(value, "external_id"),
        first_name=_optional_str(value, "first_name"),
        last_name=_optional_str(value, "last_name"),
    )


def _count(obj: Mapping[str, Any], name: str) -> int | None:
    value = obj.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_QUANTITY:
        raise RejectedInput(Reason.INVALID_FIELD, f"{name} must be an integer from 0 to {_MAX_QUANTITY}")
    return value


def _items(value: Any) -> tuple[ReturnItem, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise RejectedInput(Reason.INVALID_FIELD, "items must be a list")
    items = []
    for index, raw in enumerate(value):
        if not isinstance(raw, Mapping):
            raise RejectedInput(Reason.INVALID_FIELD, f"items[{index}] must be an object")
        quantity = raw.get("quantity", 1)
        if isinstance(quantity, bool) or not isinstance(quantity, int) or not 1 <= quantity <= _MAX_QUANTITY:
            raise RejectedInput(Reason.INVALID_FIELD,
                                f"items[{index}].quantity must be an integer from 1 to {_MAX_QUANTITY}")
        items.append(
            ReturnItem(
                sku=_optional_str(raw, "sku"),
                product_name=_optional_str(raw, "product_name"),
                variant_name=_optional_str(raw, "variant_name"),
                quantity=quantity,
                value=parse_money(raw.get("value"), f"items[{index}].value"),
                reason=_optional_str(raw, "reason"),
                reason_parent=_optional_str(raw, "reason_parent"),
                outcome=_optional_str(raw, "outcome"),
                new_sku=_optional_str(raw, "new_sku"),
            )
        )
    return tuple(items)


def _required_str(obj: Mapping[str, Any], name: str) -> str:
    value = _optional_str(obj, name)
    if not value:
        raise RejectedInput(Reason.MISSING_FIELD, f"{name} is required")
    return value


def _flag(obj: Mapping[str, Any], name: str) -> bool:
    value = obj.get(name, False)
    if not isinstance(value, bool):
        raise RejectedInput(Reason.INVALID_FIELD, f"{name} must be true or false")
    return value


def _optional_str(obj: Mapping[str, Any], name: str) -> str | None:
    value = obj.get(name)
    if type(value) is str:  # nearly every field: the fast path of the hottest parser call
        return value.strip() or None
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise RejectedInput(Reason.INVALID_FIELD, f"{name} must be a string")
    text = str(value).strip()
    return text or None


def _drop_none(values: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in values.items() if value is not None}
