"""A customer's returns as Klaviyo custom-object records (opt-in: RETURNSYNC_CUSTOM_OBJECTS).

One record per return, always the whole latest state of it, so that a merchant's object type
(identified by `id`, linked to the profile by `email` or `external_id`) can answer "customers with
an open return of a SKU in category X, requested in the last 30 days, value over 100". Pure: the
I/O is agents/klaviyo/custom_objects.py.

Bounded like the projection: texts cut at `MAX_TEXT`, at most `RETURN_ITEMS_KEPT` item lines
(the state keeps no more); `item_count` counts every unit. Money stays Decimal (sent as a JSON
number), times RFC 3339 UTC. Empty values are left out rather than sent as null.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from streams.events import format_time
from streams.projection import MAX_TEXT
from streams.state import TERMINAL_STATUSES, CustomerState, ReturnRecord


@dataclass(frozen=True, slots=True)
class ObjectRecord:
    """One return's record, and what delivery needs to order and refuse it."""

    key: str
    """`<tenant>/<return id>`: the object's identity in Klaviyo, unique across tenants."""
    customer_key: str
    version: int
    """The customer's state version it was made from: a lower one never follows a higher one."""
    record: Mapping[str, Any]


def tenant_of(customer_key: str) -> str:
    return customer_key.partition("/")[0]


def return_records(state: CustomerState, return_ids: Iterable[str]) -> list[ObjectRecord]:
    """The records of those of `return_ids` the state holds as counted returns (a return only
    money facts were seen for is not one yet; a settled one keeps its last record), in id order."""
    found = (state.returns.get(return_id) for return_id in sorted(set(return_ids)))
    return [object_record(state, record) for record in found if record is not None and record.counted]


def all_return_records(state: CustomerState) -> list[ObjectRecord]:
    """Every return the state still holds in full: what a replay or a repair writes."""
    return return_records(state, state.returns)


def object_record(state: CustomerState, record: ReturnRecord) -> ObjectRecord:
    tenant = tenant_of(state.customer_key)
    key = f"{tenant}/{record.return_id}"
    external_id = state.identity.external_id
    closed = record.status in TERMINAL_STATUSES
    fields: dict[str, Any] = {
        "id": _cut(key),
        "tenant": tenant,
        "return_id": _cut(record.return_id),
        "email": state.identity.email,
        # Longer than a text can be, it could name another profile once cut: left out.
        "external_id": external_id if external_id is not None and len(external_id) <= MAX_TEXT else None,
        "platform": record.source,
        "status": record.status,
        "open": record.active,
        "outcome": record.outcome,
        "reason": _text(record.reason),
        "order_ref": _text(record.order_ref),
        "items": [_item(item) for item in record.items] or None,
        "skus": [_cut(sku) for sku in record.skus] or None,
        "item_count": record.item_count,
        "value": record.value,
        "currency": record.currency,
        "refund_total": record.refund_total,
        "store_credit_total": record.store_credit_total,
        "opened_at": _time(record.opened_at),
        "last_changed_at": _time(last_changed(record)),
        "closed_at": _time(record.status_at) if closed else None,
        "version": state.version,
    }
    return ObjectRecord(key=key, customer_key=state.customer_key, version=state.version,
                        record={name: value for name, value in fields.items() if value is not None})


def last_changed(record: ReturnRecord) -> datetime | None:
    """The newest event time that changed anything shown: its status or any of its details."""
    moments = [at for at, _ in record.details_version.values()]
    if record.status_at is not None:
        moments.append(record.status_at)
    return max(moments, default=None)


def _item(line: Mapping[str, Any]) -> dict[str, Any]:
    """One kept item line (streams.state.ReturnRecord.items) as the record shows it."""
    value = line.get("value")
    fields = {
        "sku": _text(line.get("sku")),
        "product": _text(line.get("product_name")),
        "variant": _text(line.get("variant_name")),
        "quantity": line.get("quantity", 1),
        "value": Decimal(value) if value is not None else None,
        "reason": _text(line.get("reason") or line.get("reason_parent")),
        "outcome": _text(line.get("outcome")),
        "new_sku": _text(line.get("new_sku")),
    }
    return {name: value for name, value in fields.items() if value is not None}


def _text(value: str | None) -> str | None:
    return _cut(value) if value else None


def _cut(value: str) -> str:
    return value[:MAX_TEXT]


def _time(value: datetime | None) -> str | None:
    return format_time(value) if value is not None else None
