"""Redo adapter: real payload shapes in, exact canonical events out."""

from __future__ import annotations

import copy
from decimal import Decimal
from typing import Any

import pytest

from streams.adapters import redo
from streams.errors import Reason, RejectedInput
from streams.events import EventType
from streams.reducer import reduce_events
from tests.streams.adapter_support import (
    assert_golden,
    assert_round_trips,
    fixture_json,
    fixture_names,
    raw,
    raw_fixture,
)

LIFECYCLE = ["return_created", "return_updated", "return_complete"]


@pytest.mark.parametrize("name", fixture_names("redo"))
def test_fixture_gives_exactly_the_expected_events(name: str) -> None:
    result = redo.normalize(raw_fixture("redo", name))
    assert_golden("redo", name, result)
    assert_round_trips(result.events)


def _with(name: str, **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = copy.deepcopy(fixture_json("redo", name))
    body["return"].update(changes)
    return body


def test_created_then_updated_moves_the_status_forward_by_source_time() -> None:
    statuses = [
        [
            (e.type, e.occurred_at.isoformat())
            for e in redo.to_events(raw_fixture("redo", name))
            if e.status_raw
        ]
        for name in LIFECYCLE
    ]
    assert statuses == [
        [(EventType.RETURN_REQUESTED, "2024-05-01T12:00:00+00:00")],
        [(EventType.RETURN_RECEIVED, "2024-05-03T14:02:11+00:00")],
        [(EventType.RETURN_CLOSED, "2024-05-06T09:30:00+00:00")],
    ]


def test_resent_snapshot_yields_identical_ids_and_updates_share_the_derived_ones() -> None:
    ids = {name: [e.event_id for e in redo.to_events(raw_fixture("redo", name))] for name in LIFECYCLE}
    assert ids["return_complete"] == [
        e.event_id for e in redo.to_events(raw_fixture("redo", "return_complete"))
    ]
    requested = "redo:requested:664f65d4c5a4ca3eff4b4e43"
    assert all(requested in found for found in ids.values())


def test_lifecycle_counts_every_money_fact_once() -> None:
    names = [*LIFECYCLE, "return_complete", "return_updated"]
    state = reduce_events([e for name in names for e in redo.to_events(raw_fixture("redo", name))])
    assert state is not None
    assert state.returns["664f65d4c5a4ca3eff4b4e43"].status == "closed"
    assert (state.refund_total, state.exchange_count) == (Decimal("68.00"), 1)
    assert state.store_credit_issued_total == Decimal("12.00")  # the gift card, not the item plan too
    assert state.item_count == 4


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("pre_shipment", EventType.RETURN_REQUESTED),
        ("open", EventType.RETURN_APPROVED),
        ("in_transit", EventType.RETURN_IN_TRANSIT),
        ("delivered", EventType.RETURN_RECEIVED),
        ("complete", EventType.RETURN_CLOSED),
        ("rejected", EventType.RETURN_REJECTED),
        ("deleted", EventType.RETURN_CANCELLED),
    ],
)
def test_status_map(status: str, expected: EventType) -> None:
    result = redo.normalize(raw("redo", _with("return_updated", status=status)))
    assert result.unknown_status is None
    assert [e for e in result.events if e.status_raw][-1].type is expected


@pytest.mark.parametrize("status", ["needs_review", "in_review", "flagged"])
def test_review_states_are_known_but_change_no_status(status: str) -> None:
    result = redo.normalize(raw("redo", _with("return_updated", status=status)))
    assert result.unknown_status is None
    assert [e.type for e in result.events] == [EventType.RETURN_REQUESTED]


def test_unknown_status_is_reported_and_money_facts_still_flow() -> None:
    body = _with("return_complete", status="archived")
    result = redo.normalize(raw("redo", body))
    assert result.unknown_status == "archived"
    assert [e.type for e in result.events] == [EventType.RETURN_REQUESTED, EventType.STORE_CREDIT_ISSUED]


def test_item_refunds_are_plans_until_the_return_completes() -> None:
    types = [e.type for e in redo.to_events(raw_fixture("redo", "return_updated"))]
    assert EventType.REFUND_ISSUED not in types and EventType.EXCHANGE_CREATED not in types


def test_gift_card_code_never_becomes_an_id() -> None:
    body = _with("return_complete")
    body["return"]["giftCards"][0]["externalId"] = None
    ids = [e.event_id for e in redo.to_events(raw("redo", body))]
    assert "redo:store_credit:664f65d4c5a4ca3eff4b4e43:0" in ids
    assert not any("RDO-8H2K" in event_id for event_id in ids)


def test_order_customer_is_the_fallback_email() -> None:
    body = _with("return_created")
    body["return"]["source"]["emailAddress"] = None
    assert redo.to_events(raw("redo", body))[0].customer.email == "customer@example.com"


def test_money_may_be_nested_once_or_flat() -> None:
    body = _with("return_created")
    body["return"]["items"][1]["productValueNoTaxNoAdjustment"] = {"amount": "70.00", "currency": "USD"}
    assert redo.to_events(raw("redo", body))[0].items[1].value == Decimal("70.00")


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"type": "created"}, Reason.MISSING_FIELD),
        ({"type": "created", "return": []}, Reason.INVALID_FIELD),
        (
            {**_with("return_created", source={}), "order": {"id": "64e4da943dd822979a70bd12"}},
            Reason.MISSING_FIELD,
        ),
        (_with("return_created", id=None), Reason.MISSING_FIELD),
        (_with("return_created", status=None), Reason.MISSING_FIELD),
        (_with("return_created", status=7.5), Reason.INVALID_FIELD),
        (_with("return_created", items=[{"quantity": 0}]), Reason.INVALID_FIELD),
        (_with("return_created", items=[{"quantity": "2"}]), Reason.INVALID_FIELD),
        (_with("return_created", updatedAt="yesterday"), Reason.INVALID_FIELD),
        (
            _with("return_created", giftCards=[{"amount": {"amount": "1e30", "currency": "USD"}}]),
            Reason.INVALID_FIELD,
        ),
    ],
)
def test_unusable_payloads_are_rejected_with_a_reason(body: dict[str, Any], reason: Reason) -> None:
    with pytest.raises(RejectedInput) as caught:
        redo.normalize(raw("redo", body))
    assert caught.value.reason is reason


def test_backfill_is_a_snapshot_dated_by_the_return_not_by_the_replay() -> None:
    backfill = fixture_json("redo", "return_backfill")
    events = redo.to_events(raw_fixture("redo", "return_backfill"))
    status = [e for e in events if e.status_raw]
    assert [(e.type, e.occurred_at.isoformat()) for e in status] == [
        (EventType.RETURN_CLOSED, "2024-04-15T16:20:00+00:00")
    ]
    later = copy.deepcopy(backfill)
    later["at"] = "2024-06-01T00:00:00Z"  # replayed again, weeks later: the same return
    assert [e.occurred_at for e in redo.to_events(raw("redo", later))] == [e.occurred_at for e in events]


def test_backfill_of_a_return_already_seen_live_counts_nothing_twice() -> None:
    live = [e for name in LIFECYCLE for e in redo.to_events(raw_fixture("redo", name))]
    replayed = copy.deepcopy(fixture_json("redo", "return_complete"))
    replayed["type"] = "backfill"
    backfill = redo.to_events(raw("redo", replayed))
    before, after = reduce_events(live), reduce_events([*live, *backfill])
    assert before is not None and after is not None
    # Same derived ids, so the money is deduplicated; the status is a repeat, never announced again.
    assert {e.event_id for e in backfill if not e.status_raw} <= {e.event_id for e in live}
    assert (after.refund_total, after.store_credit_issued_total, after.exchange_count) == (
        before.refund_total,
        before.store_credit_issued_total,
        before.exchange_count,
    )
    assert (after.return_count, after.item_count) == (before.return_count, before.item_count)
    record = after.returns["664f65d4c5a4ca3eff4b4e43"]
    assert record.status == "closed" and len(record.repeated_ids) == 1


def test_a_backfill_webhook_is_history_and_a_live_one_is_not() -> None:
    backfilled = redo.to_events(raw_fixture("redo", "return_backfill"))
    live = redo.to_events(raw_fixture("redo", "return_created"))
    assert backfilled and all(event.backfill for event in backfilled)
    assert live and not any(event.backfill for event in live)
