"""AfterShip Returns adapter: real payload shapes in, exact canonical events out."""

from __future__ import annotations

import copy
from decimal import Decimal
from typing import Any

import pytest

from streams.adapters import Skip, aftership
from streams.errors import Reason, RejectedInput
from streams.events import EventType, Outcome
from streams.reducer import reduce_events
from tests.streams.adapter_support import (
    assert_golden,
    assert_round_trips,
    fixture_json,
    fixture_names,
    raw,
    raw_fixture,
)

LIFECYCLE = [
    "return_submitted",
    "return_approved",
    "return_shipment_updated",
    "return_received",
    "return_resolved",
]
RETURN_ID = "b3eedf69b7c0410d8975d4350c007705"


@pytest.mark.parametrize("name", fixture_names("aftership"))
def test_fixture_gives_exactly_the_expected_events(name: str) -> None:
    result = aftership.normalize(raw_fixture("aftership", name))
    assert_golden("aftership", name, result)
    assert_round_trips(result.events)


def test_status_events_use_the_envelope_id_and_time() -> None:
    firsts = [aftership.to_events(raw_fixture("aftership", name))[0] for name in LIFECYCLE]
    assert [(e.event_id, e.type, e.occurred_at.isoformat()) for e in firsts] == [
        (
            "aftership:0f8fad5bd9cb469fa16570867728950e",
            EventType.RETURN_REQUESTED,
            "2024-07-01T08:00:01+00:00",
        ),
        (
            "aftership:1c9e6679c2a1461c8a4b8fdc3f7fbd2a",
            EventType.RETURN_APPROVED,
            "2024-07-01T14:12:09+00:00",
        ),
        (
            "aftership:6b1d7c6eacf04b5cc34e5f6a7b8c9da4",
            EventType.RETURN_IN_TRANSIT,
            "2024-07-03T12:30:00+00:00",
        ),
        (
            "aftership:2d7f3e2a8b9c4d1e9f0a1b2c3d4e5f60",
            EventType.RETURN_RECEIVED,
            "2024-07-06T10:03:00+00:00",
        ),
        ("aftership:3e8a4f3b9cad4e2fa01b2c3d4e5f6a71", EventType.RETURN_CLOSED, "2024-07-06T11:20:00+00:00"),
    ]


def test_lifecycle_with_redeliveries_counts_every_fact_once() -> None:
    names = [*LIFECYCLE, "return_resolved", "return_approved"]
    state = reduce_events([e for name in names for e in aftership.to_events(raw_fixture("aftership", name))])
    assert state is not None
    assert state.returns[RETURN_ID].status == "closed"
    assert (state.refund_total, state.exchange_count) == (Decimal("40.00"), 1)
    assert (state.return_count, state.item_count) == (1, 2)


def _envelope(name: str, **data: Any) -> dict[str, Any]:
    body: dict[str, Any] = copy.deepcopy(fixture_json("aftership", name))
    body["data"].update(data)
    return body


def test_refund_to_store_credit_is_a_store_credit_fact() -> None:
    body = _envelope("return_resolved", refund_destination="store_credit")
    credit = [
        e for e in aftership.to_events(raw("aftership", body)) if e.type is EventType.STORE_CREDIT_ISSUED
    ]
    assert [(e.event_id, e.amount) for e in credit] == [
        (f"aftership:store_credit:{RETURN_ID}", Decimal("40.00"))
    ]
    assert credit[0].outcome is Outcome.STORE_CREDIT


@pytest.mark.parametrize(
    ("event", "status", "expected"),
    [
        ("return.created", "submitted", EventType.RETURN_REQUESTED),
        ("return.created", "approved", EventType.RETURN_APPROVED),  # auto-approval, the documented quirk
        ("return.updated", "shipped", EventType.RETURN_IN_TRANSIT),
        ("return.updated", "received", EventType.RETURN_RECEIVED),
        ("return.updated", "done", EventType.RETURN_CLOSED),
        ("return.updated", "rejected", EventType.RETURN_REJECTED),
        ("return.updated", "expired", EventType.RETURN_EXPIRED),
        ("return.expired", "expired", EventType.RETURN_EXPIRED),
        ("return.received", "approved", EventType.RETURN_RECEIVED),
    ],
)
def test_status_map(event: str, status: str, expected: EventType) -> None:
    body = fixture_json("aftership", "legacy_return_updated")
    body["event"], body["data"]["status"] = event, status
    result = aftership.normalize(raw("aftership", body))
    assert (result.unknown_status, result.events[0].type) == (None, expected)


@pytest.mark.parametrize(
    ("tracking", "expected"),
    [
        (["InfoReceived"], None),
        (["OutForDelivery"], EventType.RETURN_IN_TRANSIT),
        (["InTransit", "Delivered"], EventType.RETURN_RECEIVED),
    ],
)
def test_shipment_events_follow_the_most_advanced_parcel(
    tracking: list[str], expected: EventType | None
) -> None:
    body = fixture_json("aftership", "return_shipment_updated")
    body["data"]["shipments"] = [{"tracking_status": tag} for tag in tracking]
    result = aftership.normalize(raw("aftership", body))
    assert [e.type for e in result.events if e.type.is_status] == ([expected] if expected else [])
    assert result.skipped is (None if expected else Skip.NO_CHANGE)


def test_event_without_a_status_carries_only_the_money_facts() -> None:
    body = copy.deepcopy(fixture_json("aftership", "return_resolved"))
    body["event"] = "return.exchange.order.created"
    types = [e.type for e in aftership.normalize(raw("aftership", body)).events]
    assert types == [EventType.REFUND_ISSUED, EventType.EXCHANGE_CREATED]


def test_unknown_event_is_reported_and_money_still_flows() -> None:
    body = copy.deepcopy(fixture_json("aftership", "return_resolved"))
    body["event"] = "return.teleported"
    result = aftership.normalize(raw("aftership", body))
    assert result.unknown_status == "return.teleported"
    assert [e.type for e in result.events] == [EventType.REFUND_ISSUED, EventType.EXCHANGE_CREATED]


def test_unknown_legacy_status_is_reported() -> None:
    body = _envelope("legacy_return_updated", status="in_limbo")
    result = aftership.normalize(raw("aftership", body))
    assert (result.unknown_status, result.events) == ("in_limbo", ())


def test_customer_may_be_a_bare_list_of_emails() -> None:
    body = fixture_json("aftership", "return_submitted")
    body["data"]["order"]["customer"] = ["Alex.Kim@Example.com"]
    assert aftership.to_events(raw("aftership", body))[0].customer.email == "alex.kim@example.com"


def test_contact_email_is_the_last_resort() -> None:
    body = fixture_json("aftership", "return_submitted")
    body["data"]["order"]["customer"] = {"emails": []}
    assert aftership.to_events(raw("aftership", body))[0].customer.email == "alex.kim@example.com"


def test_missing_envelope_id_falls_back_to_a_deterministic_hash() -> None:
    body = fixture_json("aftership", "return_approved")
    del body["id"]
    first, again = (aftership.to_events(raw("aftership", body))[0].event_id for _ in range(2))
    assert first == again and first.startswith("aftership:") and len(first) == len("aftership:") + 32


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"id": "x", "event": "return.approved"}, Reason.MISSING_FIELD),
        ({"id": "x", "data": {"id": "r"}}, Reason.MISSING_FIELD),
        (_envelope("return_submitted", id=None), Reason.MISSING_FIELD),
        (_envelope("return_submitted", order={}, contact_email=None), Reason.MISSING_FIELD),
        (
            _envelope("return_submitted", return_items=[{"intended_return_quantity": 1.5}]),
            Reason.INVALID_FIELD,
        ),
        (
            _envelope("return_submitted", refunded_total={"amount": "-1", "currency": "USD"}),
            Reason.INVALID_FIELD,
        ),
        (_envelope("legacy_return_updated", status=None), Reason.MISSING_FIELD),
        (
            {**_envelope("return_submitted", shipments="none"), "event": "return.shipment.updated"},
            Reason.INVALID_FIELD,
        ),
    ],
)
def test_unusable_payloads_are_rejected_with_a_reason(body: dict[str, Any], reason: Reason) -> None:
    with pytest.raises(RejectedInput) as caught:
        aftership.normalize(raw("aftership", body))
    assert caught.value.reason is reason


DROPOFF_RETURN = "2c1b0a9f8e7d4c6ba5f4e3d2c1b0a9f8"


@pytest.mark.parametrize(
    ("event", "dropoff_status", "expected"),
    [
        ("return.dropoff.created", "created", None),
        ("return.dropoff.updated", "created", None),
        ("return.dropoff.updated", "dropped", EventType.RETURN_IN_TRANSIT),
        ("return.dropoff.updated", "partially_dropped", EventType.RETURN_IN_TRANSIT),
        ("return.dropoff.shipment.updated", "dropped", EventType.RETURN_IN_TRANSIT),
    ],
)
def test_a_dropped_off_return_is_on_its_way(
    event: str, dropoff_status: str, expected: EventType | None
) -> None:
    # Happy Returns' shipments carry no tracking status: the drop-off is the return's carrier scan.
    body = fixture_json("aftership", "return_dropoff_updated")
    body["event"] = event
    body["data"]["dropoffs"][0]["status"] = dropoff_status
    result = aftership.normalize(raw("aftership", body))
    assert [(e.type, e.status_raw) for e in result.events] == (
        [(expected, dropoff_status)] if expected else []
    )
    assert (result.unknown_status, result.skipped) == (None, None if expected else Skip.NO_CHANGE)


def test_unknown_dropoff_status_is_reported() -> None:
    body = fixture_json("aftership", "return_dropoff_updated")
    body["data"]["dropoffs"][0]["status"] = "lost_in_store"
    result = aftership.normalize(raw("aftership", body))
    assert (result.unknown_status, result.events) == ("lost_in_store", ())


def test_dropoff_lifecycle_announces_in_transit_once() -> None:
    names = ["return_dropoff_created", "return_dropoff_updated", "return_dropoff_shipment_updated"]
    state = reduce_events([e for name in names for e in aftership.to_events(raw_fixture("aftership", name))])
    assert state is not None
    record = state.returns[DROPOFF_RETURN]
    assert record.status == "in_transit"
    assert len(record.repeated_ids) == 1  # the drop-off shipment update says nothing new


@pytest.mark.parametrize("tracking", ["InTransit", "Delivered"])
def test_a_scan_after_the_return_was_resolved_never_reopens_it(tracking: str) -> None:
    # Merchants that refund on the first scan see the rest of the parcel's journey afterwards.
    late = copy.deepcopy(fixture_json("aftership", "return_resolved"))
    late.update(
        id="9c4b2a1f0e3d4c5b8a7f6e5d4c3b2a19",
        event="return.shipment.updated",
        created_at="2024-07-07T08:00:00Z",
    )
    late["data"]["shipments"][0]["tracking_status"] = tracking
    result = aftership.normalize(raw("aftership", late))
    assert not [e for e in result.events if e.type.is_status]
    assert [e.type for e in result.events] == [EventType.REFUND_ISSUED, EventType.EXCHANGE_CREATED]
    assert result.unknown_status is None
    lifecycle = [e for name in LIFECYCLE for e in aftership.to_events(raw_fixture("aftership", name))]
    state = reduce_events([*lifecycle, *result.events])
    assert state is not None and state.returns[RETURN_ID].status == "closed"


@pytest.mark.parametrize(
    ("tracking", "expected"), [("InTransit", None), ("Delivered", EventType.RETURN_RECEIVED)]
)
def test_a_scan_after_receipt_does_not_move_the_return_back(
    tracking: str, expected: EventType | None
) -> None:
    body = copy.deepcopy(fixture_json("aftership", "return_received"))
    body["event"] = "return.shipment.updated"
    body["data"]["shipments"] = [{"tracking_status": tracking}]
    result = aftership.normalize(raw("aftership", body))
    assert [e.type for e in result.events] == ([expected] if expected else [])
    assert result.skipped is (None if expected else Skip.NO_CHANGE)


@pytest.mark.parametrize(
    "name",
    [
        "return_shipment_provided",
        "return_shipments_provided",
        "return_shipment_recorded",
        "return_restock_created",
        "legacy_return_shipment_created",
        "legacy_return_shipments_created",
    ],
)
def test_label_and_restock_events_change_no_status_but_say_why(name: str) -> None:
    result = aftership.normalize(raw_fixture("aftership", name))
    assert (result.events, result.unknown_status, result.skipped) == ((), None, Skip.NO_CHANGE)


def test_legacy_lifecycle_moves_forward_by_source_time() -> None:
    names = [
        "legacy_return_created",
        "legacy_return_approved",
        "legacy_return_shipment_created",
        "legacy_return_shipments_created",
        "legacy_return_shipment_updated",
        "legacy_return_updated",
    ]
    events = [e for name in names for e in aftership.to_events(raw_fixture("aftership", name))]
    assert [e.type for e in events] == [
        EventType.RETURN_REQUESTED,
        EventType.RETURN_APPROVED,
        EventType.RETURN_IN_TRANSIT,
        EventType.RETURN_IN_TRANSIT,
    ]
    state = reduce_events(reversed(events))
    assert state is not None and state.returns["9e107d9d372bb6826bd81d3542a419d6"].status == "in_transit"
