"""Loop adapter: real payload shapes in, exact canonical events out."""

from __future__ import annotations

import copy
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest

from streams.adapters import Normalized, Skip, loop
from streams.errors import Reason, RejectedInput
from streams.events import EventType
from streams.outbox import SyncRecord, timeline_events
from streams.projection import ProjectionConfig
from streams.reducer import apply_event, reduce_events
from tests.streams.adapter_support import (
    RECEIVED,
    as_dicts,
    assert_golden,
    assert_round_trips,
    fixture_json,
    fixture_names,
    raw,
    raw_fixture,
)

LIFECYCLE = ["return_created", "return_updated_in_transit", "return_updated_delivered", "return_closed"]


@pytest.mark.parametrize("name", fixture_names("loop"))
def test_fixture_gives_exactly_the_expected_events(name: str) -> None:
    result = loop.normalize(raw_fixture("loop", name))
    assert_golden("loop", name, result)
    assert_round_trips(result.events)


def test_lifecycle_moves_through_every_status_with_source_times() -> None:
    statuses = []
    for name in LIFECYCLE:
        events = loop.to_events(raw_fixture("loop", name))
        status = events[-1] if name != "return_closed" else events[1]
        statuses.append((status.type, status.status_raw, status.occurred_at.isoformat()))
    assert statuses == [
        (EventType.RETURN_APPROVED, "open", "2024-03-02T16:08:02+00:00"),
        (EventType.RETURN_IN_TRANSIT, "in_transit", "2024-03-04T13:22:10+00:00"),
        (EventType.RETURN_RECEIVED, "delivered", "2024-03-08T21:19:04+00:00"),
        (EventType.RETURN_CLOSED, "closed", "2024-03-09T10:12:00+00:00"),
    ]


def test_resent_snapshot_yields_identical_ids_whenever_it_is_received() -> None:
    for name in [*LIFECYCLE, "giftcard_requested"]:
        first = loop.to_events(raw_fixture("loop", name))
        again = loop.to_events(
            raw("loop", raw_fixture("loop", name).body, received_at=RECEIVED + timedelta(days=3))
        )
        assert [e.event_id for e in first] == [e.event_id for e in again]


def test_derived_facts_keep_their_ids_when_the_snapshot_changes() -> None:
    closed = fixture_json("loop", "return_closed")
    edited = copy.deepcopy(closed)
    edited["edited_at"] = "2024-03-10T08:00:00+00:00"
    edited["handling_fee"] = "0.00"
    before = {e.type: e.event_id for e in loop.to_events(raw("loop", closed))}
    after = {e.type: e.event_id for e in loop.to_events(raw("loop", edited))}
    assert before[EventType.RETURN_CLOSED] != after[EventType.RETURN_CLOSED]  # a new version of the return
    for kind in (EventType.RETURN_REQUESTED, EventType.REFUND_ISSUED, EventType.EXCHANGE_CREATED):
        assert before[kind] == after[kind]
    assert (
        before[EventType.STORE_CREDIT_ISSUED]
        == after[EventType.STORE_CREDIT_ISSUED]
        == "loop:store_credit:6042537"
    )


def test_a_close_sent_as_return_updated_and_return_closed_is_announced_once() -> None:
    # Loop fires both triggers when a return closes (reference §1.3): one "Return Closed" for flows.
    closed = fixture_json("loop", "return_closed")
    updated = {**copy.deepcopy(closed), "trigger": "return.updated"}
    events = [e for body in (updated, closed) for e in loop.to_events(raw("loop", body))]
    state, records = None, []
    for event in events:
        result = apply_event(state, event)
        state = result.state
        records.append(SyncRecord(state, event, result.applied, RECEIVED))
    # What Klaviyo keeps: one entry per metric and unique_id (a re-sent duplicate is dropped).
    config = ProjectionConfig()
    timeline = {(e.metric, e.unique_id) for record in records for e in timeline_events(record, config)}
    assert [metric for metric, _ in timeline].count("Return Closed") == 1
    refunds = {e.event_id for e in events if e.type is EventType.REFUND_ISSUED}
    assert {unique_id for metric, unique_id in timeline if metric == "Refund Issued"} == refunds


def test_whole_lifecycle_plus_gift_card_webhook_counts_every_fact_once() -> None:
    deliveries = [*LIFECYCLE, "return_closed", "giftcard_requested", "return_updated_delivered"]
    events = [event for name in deliveries for event in loop.to_events(raw_fixture("loop", name))]
    state = reduce_events(events)
    assert state is not None
    record = state.returns["6042537"]
    assert (record.status, state.return_count, state.item_count) == ("closed", 1, 3)
    assert state.refund_total == Decimal("54.25")
    assert state.exchange_count == 1
    assert state.store_credit_issued_total == Decimal("26.75")
    assert record.opened_at is not None and record.opened_at.isoformat() == "2024-03-02T16:07:31+00:00"


def _with(name: str, **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = copy.deepcopy(fixture_json("loop", name))
    body.update(changes)
    return body


@pytest.mark.parametrize(
    ("state", "label_status", "expected"),
    [
        ("open", "new", EventType.RETURN_APPROVED),
        ("open", "N/A", EventType.RETURN_APPROVED),
        ("open", "pre_transit", EventType.RETURN_APPROVED),
        ("open", "out_for_delivery", EventType.RETURN_IN_TRANSIT),
        ("open", "delivered", EventType.RETURN_RECEIVED),
        ("open", None, EventType.RETURN_APPROVED),
        ("closed", "delivered", EventType.RETURN_CLOSED),
        ("cancelled", "new", EventType.RETURN_CANCELLED),
        ("expired", "new", EventType.RETURN_EXPIRED),
        ("review", "new", EventType.RETURN_REQUESTED),
        ("needs review", None, EventType.RETURN_REQUESTED),
        ("Open", "In_Transit", EventType.RETURN_IN_TRANSIT),
    ],
)
def test_status_map(state: str, label_status: str | None, expected: EventType) -> None:
    body = _with("return_created", state=state, label_status=label_status, labels=[])
    result = loop.normalize(raw("loop", body))
    assert result.unknown_status is None
    status = [e for e in result.events if e.type.is_status][-1]
    assert status.type is expected
    assert status.status_raw in {state, label_status}


def test_review_is_the_requested_fact_itself_not_a_second_one() -> None:
    events = loop.to_events(raw("loop", _with("return_created", state="review")))
    assert [(e.type, e.event_id, e.status_raw) for e in events] == [
        (EventType.RETURN_REQUESTED, "loop:requested:6042537", "review")
    ]


def test_unknown_state_makes_no_status_event_but_keeps_money_and_says_so() -> None:
    result = loop.normalize(raw("loop", _with("return_closed", state="on_hold")))
    assert result.unknown_status == "on_hold"
    assert [e.type for e in result.events] == [EventType.RETURN_REQUESTED, EventType.REFUND_ISSUED]


def test_unknown_label_status_keeps_the_state_and_says_so() -> None:
    result = loop.normalize(raw("loop", _with("return_created", label_status="return_to_sender")))
    assert result.unknown_status == "return_to_sender"
    assert result.events[-1].type is EventType.RETURN_APPROVED


def test_refund_without_provider_id_is_keyed_by_its_position_and_zero_refunds_are_not_facts() -> None:
    refunds = [
        {"gateway": "manual", "amount": "0.00", "currency": "USD"},
        {"gateway": "manual", "amount": 12, "currency": "usd"},
    ]
    events = loop.to_events(raw("loop", _with("return_created", refunds=refunds)))
    refund = [e for e in events if e.type is EventType.REFUND_ISSUED]
    assert [(e.event_id, e.amount, e.currency) for e in refund] == [
        ("loop:refund:6042537:1", Decimal(12), "USD")
    ]


def test_exchanges_and_gift_card_wait_for_the_return_to_close() -> None:
    types = {e.type for e in loop.to_events(raw_fixture("loop", "return_updated_delivered"))}
    assert not types & {EventType.EXCHANGE_CREATED, EventType.STORE_CREDIT_ISSUED}


def test_customer_falls_back_to_the_top_level_email_and_is_normalised() -> None:
    body = _with("return_created", customer_detail=None, customer="  Someone@Example.COM ")
    assert loop.to_events(raw("loop", body))[0].customer.email == "someone@example.com"


def test_tenant_comes_from_the_header() -> None:
    events = loop.to_events(raw_fixture("loop", "return_created", **{"X-ReturnSync-Tenant": "brand-eu"}))
    assert {e.tenant for e in events} == {"brand-eu"}


def test_no_timestamps_at_all_falls_back_to_receipt() -> None:
    body = _with("return_created", created_at=None, label_updated_at=None, labels=[])
    events = loop.to_events(raw("loop", body))
    assert {e.occurred_at for e in events} == {RECEIVED}


def test_empty_payload_for_a_mismatched_trigger_is_skipped_not_dead_lettered() -> None:
    assert loop.normalize(raw("loop", b"{}")) == Normalized(skipped=Skip.EMPTY_PAYLOAD)


def test_topic_is_inferred_from_the_trigger_when_absent() -> None:
    body = _with("label_updated", topic=None)
    assert loop.normalize(raw("loop", body)).skipped is Skip.NO_CUSTOMER
    body = _with("return_closed", topic=None)
    assert len(loop.to_events(raw("loop", body))) == 5


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"not json", Reason.NOT_JSON),
        (b"[1, 2]", Reason.NOT_AN_OBJECT),
        ({"topic": "return", "id": "1"}, Reason.MISSING_FIELD),  # no customer
        (_with("return_created", customer_detail={"email": None}, customer=None), Reason.MISSING_FIELD),
        (_with("return_created", customer_detail={"email": "not-an-email"}), Reason.INVALID_FIELD),
        (_with("return_created", state=None), Reason.MISSING_FIELD),
        (_with("return_created", id=None), Reason.MISSING_FIELD),
        (_with("return_created", created_at="2024-03-02 16:07:31"), Reason.INVALID_FIELD),  # naive
        (_with("return_created", line_items={"0": {}}), Reason.INVALID_FIELD),
        (_with("return_created", return_total="-3.00"), Reason.INVALID_FIELD),
        (_with("return_created", currency="dollars"), Reason.INVALID_FIELD),
        (_with("giftcard_requested", email=None), Reason.MISSING_FIELD),
        ({"topic": "subscription", "trigger": "subscription.created"}, Reason.UNSUPPORTED_PAYLOAD),
        ({"shop_id": 1}, Reason.MISSING_FIELD),  # neither topic nor trigger
    ],
)
def test_unusable_payloads_are_rejected_with_a_reason(body: bytes | dict[str, Any], reason: Reason) -> None:
    with pytest.raises(RejectedInput) as caught:
        loop.normalize(raw("loop", body))
    assert caught.value.reason is reason


def test_gift_card_without_return_or_card_id_still_gets_a_deterministic_id() -> None:
    body = _with("giftcard_requested", id=None, return_id=None)
    first, again = (loop.to_events(raw("loop", body)) for _ in range(2))
    assert first[0].event_id == again[0].event_id
    assert first[0].event_id.startswith("loop:") and first[0].return_id is None
    body = _with("giftcard_requested", return_id=None)
    assert as_dicts(loop.to_events(raw("loop", body)))[0]["event_id"] == "loop:store_credit:gift_card:55012"


def test_zero_gift_card_webhook_is_skipped() -> None:
    body = _with("giftcard_requested", total_credit_issued="0.00")
    assert loop.normalize(raw("loop", body)).skipped is Skip.NO_CHANGE


@pytest.mark.parametrize(
    ("name", "status", "active"),
    [
        ("return_updated_cancelled", "cancelled", False),
        ("return_updated_expired", "expired", False),
        ("return_updated_review", "requested", True),  # held for review: open, not yet accepted
    ],
)
def test_return_updated_states_end_or_hold_the_return(name: str, status: str, active: bool) -> None:
    events = loop.to_events(raw_fixture("loop", name))
    state = reduce_events(events)
    assert state is not None
    (record,) = state.returns.values()
    assert (record.status, record.active, bool(state.active_returns)) == (status, active, active)
    # Nothing was processed: a planned refund or gift card is not money that moved.
    assert not [e for e in events if not e.type.is_status]


@pytest.mark.parametrize("name", ["label_requested", "label_created", "label_updated", "label_closed"])
def test_every_label_trigger_is_skipped_for_want_of_a_customer(name: str) -> None:
    assert loop.normalize(raw_fixture("loop", name)) == Normalized(skipped=Skip.NO_CUSTOMER)
