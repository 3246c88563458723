"""A customer's return state (SPEC §4) and its serialised form in the table.

State is immutable: the reducer builds a new value for every applied event. Everything the
projection shows that can be derived (active returns, last return, balance, returned SKUs) is
derived here from the stored facts rather than stored, so no delivery order can make it disagree.

Bounded whatever the history: open returns are kept in full, closed ones only until newer ones
replace them (`streams.reducer.CLOSED_KEPT`); older ones are *settled*: their counts stay in the
lifetime totals, their id in `settled_returns` (so a late event for one never reopens or recounts
it), their SKUs in `settled_skus`. Money facts are remembered as digests in `fact_digests`, so a
redelivery at any age is applied once; orders likewise by their `order_ref` in `order_digests`, so
the orders count is exact for ever at 8 bytes an order.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

import orjson

from streams import digests
from streams.events import Outcome, format_time
from streams.frozen import replace

ACTIVE_STATUSES = frozenset({"requested", "approved", "in_transit", "received"})
TERMINAL_STATUSES = frozenset({"closed", "rejected", "cancelled", "expired"})
# Ties on occurred_at resolve forward through the lifecycle, then by event id: a total order.
STATUS_RANK = {
    "requested": 0,
    "approved": 1,
    "in_transit": 2,
    "received": 3,
    "closed": 4,
    "rejected": 4,
    "cancelled": 4,
    "expired": 4,
}
RETURNED_SKUS_LIMIT = 50

Version = tuple[datetime, int, str]
"""Orders facts about one return: (occurred_at, status rank, event id)."""
Stamp = tuple[datetime, str]
"""(occurred_at, event id) of the event a detail came from. Each detail keeps its own stamp, so
the newest event carrying it wins whatever the delivery order."""


@dataclass(frozen=True, slots=True)
class ReturnRecord:
    """What is known about one return. Kept after it closes so late events cannot reopen it."""

    return_id: str
    status: str | None = None
    status_version: Version | None = None
    opened_at: datetime | None = None
    order_ref: str | None = None
    skus: tuple[str, ...] = ()
    item_count: int = 0
    value: Decimal | None = None
    reason: str | None = None
    details_version: Mapping[str, Stamp] = field(default_factory=dict)
    """Stamp per detail: `items` (skus, item_count), `reason`, `value`, `order_ref`."""
    outcomes: frozenset[str] = frozenset()
    source: str | None = None
    """The platform it came from (`loop`, `redo`, ... `api`), from the newest event naming it."""
    currency: str | None = None
    items: tuple[Mapping[str, Any], ...] = ()
    """The item lines of the newest status event carrying them, the first
    `streams.reducer.RETURN_ITEMS_KEPT` (text cut like the projection's); `item_count` counts all.
    Kept in the canonical event's item form (money as decimal text), as plain JSON: reading a
    stored state, which the fold does for every event, then builds no objects for them."""
    refund_total: Decimal = Decimal(0)
    store_credit_total: Decimal = Decimal(0)
    """Refunds and store credit issued for this return (each fact once, like the state's totals)."""
    fact_ids: frozenset[str] = frozenset()
    repeated_ids: frozenset[str] = frozenset()
    """Status events that found the return already in their status: another snapshot of it
    (Loop sends `return.updated` and `return.closed` for one close). They add nothing to the
    timeline, and a redelivery of one must know that too, so they are remembered here."""
    json_cache: orjson.Fragment | None = field(default=None, init=False, compare=False, repr=False)
    """This record's serialised form, once encoded: a state write re-encodes only the record the
    event changed (records are immutable and `replace` starts a new one without it)."""

    @property
    def counted(self) -> bool:
        """A return counts once a status event was seen; money facts alone do not make one."""
        return self.status is not None

    @property
    def active(self) -> bool:
        return self.status in ACTIVE_STATUSES

    @property
    def status_at(self) -> datetime | None:
        return self.status_version[0] if self.status_version else None

    @property
    def outcome(self) -> str | None:
        if not self.outcomes:
            return None
        if len(self.outcomes) > 1 or Outcome.MIXED in self.outcomes:
            return Outcome.MIXED.value
        return next(iter(self.outcomes))


@dataclass(frozen=True, slots=True)
class Identity:
    email: str
    external_id: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    version: Mapping[str, Stamp] = field(default_factory=dict)
    """Stamp per field: `external_id`, `first_name`, `last_name`."""


@dataclass(frozen=True, slots=True)
class CustomerState:
    customer_key: str
    identity: Identity
    returns: Mapping[str, ReturnRecord] = field(default_factory=dict)
    return_count: int = 0
    item_count: int = 0
    refund_total: Decimal = Decimal(0)
    exchange_count: int = 0
    store_credit_issued_total: Decimal = Decimal(0)
    store_credit_redeemed_total: Decimal = Decimal(0)
    first_return_at: datetime | None = None
    version: int = 0
    fact_digests: bytes = b""
    """Digests (streams.digests) of every money fact applied: refunds, exchanges, credit."""
    settled_returns: bytes = b""
    """Digests of the returns settled out of `returns`: closed, counted, and final."""
    settled_skus: tuple[str, ...] = ()
    """SKUs of settled returns, most recently opened first, each once, bounded."""
    order_count: int = 0
    """Distinct orders placed (`order.placed`, one per `order_ref`): the return rate's denominator."""
    ordered_item_count: int = 0
    order_totals: Mapping[str, Decimal] = field(default_factory=dict)
    """Order amounts summed per currency (ISO 4217 -> total)."""
    refund_currencies: frozenset[str] = frozenset()
    """Currencies refunds named; a refund naming none is in the store's currency."""
    order_digests: bytes = b""
    """Digests of the `order_ref` of every order counted: a re-sent order at any age is a duplicate."""

    @property
    def store_credit_balance(self) -> Decimal:
        """Issued minus redeemed, never negative: a redemption seen before its issue waits."""
        return max(Decimal(0), self.store_credit_issued_total - self.store_credit_redeemed_total)

    @property
    def net_spend(self) -> Decimal | None:
        """Order amounts minus refunds, when both are in one currency: the orders' only currency,
        and refunds naming no currency or that one. None without orders or with mixed currencies:
        amounts in different currencies are never added up."""
        if len(self.order_totals) != 1:
            return None
        ((currency, total),) = self.order_totals.items()
        if self.refund_currencies - {currency}:
            return None
        return total - self.refund_total

    @property
    def active_returns(self) -> list[ReturnRecord]:
        return sorted(
            (record for record in self.returns.values() if record.active),
            key=lambda record: (record.opened_at or record.status_at, record.return_id),
        )

    @property
    def last_return(self) -> ReturnRecord | None:
        counted = [record for record in self.returns.values() if record.counted]
        if not counted:
            return None
        return max(counted, key=lambda record: (record.opened_at, record.return_id))

    @property
    def returned_skus(self) -> list[str]:
        """SKUs returned, most recently opened return first, each once, bounded."""
        ordered = sorted(
            (record for record in self.returns.values() if record.counted),
            key=lambda record: (record.opened_at, record.return_id),
            reverse=True,
        )
        seen: dict[str, None] = {}
        for record in ordered:
            for sku in record.skus:
                seen.setdefault(sku, None)
        # Settled returns are all older than the closed ones still kept (the oldest settle first).
        seen.update(dict.fromkeys(self.settled_skus))
        return list(seen)[:RETURNED_SKUS_LIMIT]


# ---------------------------------------------------------------------------------------------
# Serialised forms. The dict form: plain JSON types, money as decimal text, times as RFC 3339 UTC,
# digest sets as base64. The stored form (the table's value): the dict form without the digest
# sets as JSON, a newline (JSON from orjson never holds a raw one), then the digest sets as raw
# bytes. The JSON part alone is what delivery needs, spliced into sync records as it is, and the
# digests cost 8 bytes a member instead of 11.
#
# `format` says which layout a stored state has; every older one is still read, so an upgrade
# needs no topic surgery (the next write stores the current one).

FORMAT = 3
"""1: the first layout (JSON only, no `format` key; the last 1,000 event ids, up to 500 returns).
2: bounded (settled returns; money facts as digests), digests after the JSON.
3: orders (count, items, totals per currency, refund currencies; their digests after the others),
and each stored record writing its version stamps once (`stamps`, referred to by index).
A worker reads every format up to its own; an older worker refuses a newer one (loudly: the
event is dead-lettered and can be re-driven once it is upgraded), so upgrade every worker before
any of them writes format 3."""


def state_to_dict(state: CustomerState) -> dict[str, Any]:
    return {
        **_head(state, [_record_to_dict(record) for record in state.returns.values()]),
        "fact_digests": _digests_out(state.fact_digests),
        "settled_returns": _digests_out(state.settled_returns),
        "order_digests": _digests_out(state.order_digests),
    }


def state_from_dict(data: Mapping[str, Any]) -> CustomerState:
    state = _from_head(data, _digests_in(data.get("fact_digests")), _digests_in(data.get("settled_returns")),
                       _digests_in(data.get("order_digests")))
    return _from_format_1(state, data) if data.get("format", 1) == 1 else state


def state_to_bytes(state: CustomerState) -> bytes:
    """The stored form. Records encoded before are reused: the state agent writes every state it
    makes, and most of a state is the records it kept."""
    head = _head(state, [_record_json(record) for record in state.returns.values()])
    head["digest_sizes"] = [len(state.fact_digests), len(state.settled_returns), len(state.order_digests)]
    return orjson.dumps(head) + b"\n" + state.fact_digests + state.settled_returns + state.order_digests


def state_from_bytes(value: bytes) -> CustomerState:
    """A stored state of any format."""
    head, _, tail = value.partition(b"\n")
    data = orjson.loads(head)
    if data.get("format", 1) == 1:
        return state_from_dict(data)
    if data["format"] > FORMAT:  # written by a newer release: never guess at its layout
        raise ValueError(f"state format {data['format']} is newer than this release's ({FORMAT}): "
                         "upgrade this worker")
    # Format 3 adds the order digests last (a third size); format 2 has none after the settled.
    facts_size, settled_size = data["digest_sizes"][:2]
    settled_end = facts_size + settled_size
    return _from_head(data, tail[:facts_size], tail[facts_size:settled_end], tail[settled_end:])


_ACTIVE_STATUS_KEYS = tuple(f'"status":"{status}"'.encode() for status in sorted(ACTIVE_STATUSES))


def has_active_return(value: bytes) -> bool:
    """Whether a stored state (any format) has an active return, without decoding it: only a
    return record has a `status` key, and orjson escapes quotes inside strings, so the bytes
    `"status":"requested"` are that key and value and nothing else. For counting over a whole
    table, where decoding every state would take seconds."""
    head = value.partition(b"\n")[0]
    return any(key in head for key in _ACTIVE_STATUS_KEYS)


def state_json(value: bytes) -> bytes:
    """The JSON part of a stored state: all of it but the digest sets (any format)."""
    return value.partition(b"\n")[0]


def _head(state: CustomerState, records: list[Any]) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "customer_key": state.customer_key,
        "identity": {
            "email": state.identity.email,
            "external_id": state.identity.external_id,
            "first_name": state.identity.first_name,
            "last_name": state.identity.last_name,
            "version": _stamps_out(state.identity.version),
        },
        "returns": records,
        "return_count": state.return_count,
        "item_count": state.item_count,
        "refund_total": str(state.refund_total),
        "exchange_count": state.exchange_count,
        "store_credit_issued_total": str(state.store_credit_issued_total),
        "store_credit_redeemed_total": str(state.store_credit_redeemed_total),
        "first_return_at": _time_out(state.first_return_at),
        "version": state.version,
        "settled_skus": list(state.settled_skus),
        "order_count": state.order_count,
        "ordered_item_count": state.ordered_item_count,
        "order_totals": {currency: str(total) for currency, total in sorted(state.order_totals.items())},
        "refund_currencies": sorted(state.refund_currencies),
    }


def _from_head(
    data: Mapping[str, Any], fact_digests: bytes, settled_returns: bytes, order_digests: bytes
) -> CustomerState:
    identity = data["identity"]
    records = (_record_from_dict(item) for item in data["returns"])
    return CustomerState(
        customer_key=data["customer_key"],
        identity=Identity(
            email=identity["email"],
            external_id=identity["external_id"],
            first_name=identity["first_name"],
            last_name=identity["last_name"],
            version=_stamps_in(identity["version"]),
        ),
        returns={record.return_id: record for record in records},
        return_count=data["return_count"],
        item_count=data["item_count"],
        refund_total=Decimal(data["refund_total"]),
        exchange_count=data["exchange_count"],
        store_credit_issued_total=Decimal(data["store_credit_issued_total"]),
        store_credit_redeemed_total=Decimal(data["store_credit_redeemed_total"]),
        first_return_at=_time_in(data["first_return_at"]),
        version=data["version"],
        fact_digests=fact_digests,
        settled_returns=settled_returns,
        settled_skus=tuple(data.get("settled_skus", ())),
        # Formats 1 and 2 knew no orders.
        order_count=data.get("order_count", 0),
        ordered_item_count=data.get("ordered_item_count", 0),
        order_totals={currency: Decimal(total) for currency, total in data.get("order_totals", {}).items()},
        refund_currencies=frozenset(data.get("refund_currencies", ())),
        order_digests=order_digests,
    )


def _from_format_1(state: CustomerState, data: Mapping[str, Any]) -> CustomerState:
    """Format 1 deduplicated by the last 1,000 event ids and by each kept return's ids. Format 2
    looks money facts up in `fact_digests`, and cannot tell which of those ids were money facts,
    so all of them go in: an upgraded state is as exact as it was, once. The reducer settles its
    surplus closed returns on the next event."""
    remembered = set(data["applied_ids"])
    for record in state.returns.values():
        remembered.update(record.fact_ids)
    return replace(state, fact_digests=digests.of(remembered))


def _record_json(record: ReturnRecord) -> orjson.Fragment:
    if record.json_cache is None:
        object.__setattr__(record, "json_cache", orjson.Fragment(orjson.dumps(_record_stored(record))))
    assert record.json_cache is not None
    return record.json_cache


def _record_to_dict(record: ReturnRecord) -> dict[str, Any]:
    """The readable form (the customer view): each version stamp written out where it applies."""
    status_version = record.status_version
    return {
        **_record_facts(record),
        "status_version": (
            [format_time(status_version[0]), status_version[1], status_version[2]]
            if status_version
            else None
        ),
        "details_version": _stamps_out(record.details_version),
    }


def _record_stored(record: ReturnRecord) -> dict[str, Any]:
    """The stored form of a record: its version stamps written once each, referred to by index.
    A record's status and its details mostly come from the same two or three events, and the
    stamps (time and event id) were 40% of a record written out in full."""
    stamps: dict[Stamp, int] = {}
    status_version = record.status_version
    stored_version = None
    if status_version is not None:
        stamps[status_version[0], status_version[2]] = 0
        stored_version = [0, status_version[1]]
    named = {name: stamps.setdefault(stamp, len(stamps))
             for name, stamp in sorted(record.details_version.items())}
    details: dict[str, int] | list[int | None] = named
    if named.keys() <= _DETAIL_ORDER.keys():
        details = [named.get(name) for name in _DETAIL_ORDER]
        while details and details[-1] is None:
            details.pop()
    facts = _record_facts(record)
    for name, empty in _LEFT_OUT_WHEN_EMPTY.items():
        if facts[name] == empty:
            del facts[name]
    return {
        **facts,
        "stamps": [[format_time(at), event_id] for at, event_id in stamps],
        "status_version": stored_version,
        "details_version": details,
    }


_DETAIL_ORDER = {name: place for place, name in enumerate(
    ("currency", "items", "order_ref", "reason", "source", "value"))}
"""The details a record stamps (streams.reducer._with_details), in the order the stored form
lists their stamp indexes (null where a detail has none, trailing nulls left out): half the
bytes of naming them. A
detail not listed here makes that record name them all again."""

_LEFT_OUT_WHEN_EMPTY: dict[str, Any] = {
    "outcomes": [], "repeated_ids": [], "source": None, "currency": None, "items": [],
    "refund_total": "0", "store_credit_total": "0",
}
"""Stored-form fields mostly empty, left out then (the reader defaults them): most returns have
no outcome yet, repeats, item lines (custom objects off) or money of their own."""


def _record_facts(record: ReturnRecord) -> dict[str, Any]:
    """Everything of a record but its version stamps, the same in both forms."""
    return {
        "return_id": record.return_id,
        "status": record.status,
        "opened_at": _time_out(record.opened_at),
        "order_ref": record.order_ref,
        "skus": list(record.skus),
        "item_count": record.item_count,
        "value": str(record.value) if record.value is not None else None,
        "reason": record.reason,
        "outcomes": sorted(record.outcomes),
        "fact_ids": sorted(record.fact_ids),
        "repeated_ids": sorted(record.repeated_ids),
        "source": record.source,
        "currency": record.currency,
        "items": list(record.items),
        "refund_total": str(record.refund_total),
        "store_credit_total": str(record.store_credit_total),
    }


def _record_from_dict(data: Mapping[str, Any]) -> ReturnRecord:
    """A record in the dict form, or stored (format 3 shares its stamps; format 2 did not)."""
    raw_version = data["status_version"]
    raw_details = data["details_version"]
    if "stamps" in data:
        stamps = [(datetime.fromisoformat(at), event_id) for at, event_id in data["stamps"]]
        if raw_version:
            at, event_id = stamps[raw_version[0]]
            raw_version = [at, raw_version[1], event_id]
        named = zip(_DETAIL_ORDER, raw_details, strict=False) if isinstance(raw_details, list) else (
            raw_details.items())
        details_version = {name: stamps[index] for name, index in named if index is not None}
    else:
        if raw_version:
            raw_version = [datetime.fromisoformat(raw_version[0]), raw_version[1], raw_version[2]]
        details_version = _stamps_in(raw_details)
    return ReturnRecord(
        return_id=data["return_id"],
        status=data["status"],
        status_version=(raw_version[0], raw_version[1], raw_version[2]) if raw_version else None,
        opened_at=_time_in(data["opened_at"]),
        order_ref=data["order_ref"],
        skus=tuple(data["skus"]),
        item_count=data["item_count"],
        value=Decimal(data["value"]) if data["value"] is not None else None,
        reason=data["reason"],
        details_version=details_version,
        outcomes=frozenset(data.get("outcomes", ())),
        fact_ids=frozenset(data["fact_ids"]),
        # Absent from states written before repeats were told apart.
        repeated_ids=frozenset(data.get("repeated_ids", ())),
        # Absent from states written before returns kept their lines and money (custom objects).
        source=data.get("source"),
        currency=data.get("currency"),
        items=tuple(data.get("items", ())),
        refund_total=Decimal(data.get("refund_total", "0")),
        store_credit_total=Decimal(data.get("store_credit_total", "0")),
    )


def _digests_out(value: bytes) -> str:
    return base64.b64encode(value).decode("ascii")


def _digests_in(value: str | None) -> bytes:
    return base64.b64decode(value) if value else b""


def _time_out(value: datetime | None) -> str | None:
    return format_time(value) if value is not None else None


def _time_in(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value is not None else None


def _stamps_out(stamps: Mapping[str, Stamp]) -> dict[str, list[str]]:
    return {name: [format_time(at), event_id] for name, (at, event_id) in sorted(stamps.items())}


def _stamps_in(data: Mapping[str, list[str]]) -> dict[str, Stamp]:
    return {name: (datetime.fromisoformat(at), event_id) for name, (at, event_id) in data.items()}
