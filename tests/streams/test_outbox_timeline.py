"""What a sync record adds to the Klaviyo timeline: new statuses announce, repeats stay quiet,
history goes as backfill, and a redelivery decides as the first delivery did."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest

from streams.errors import Reason, RejectedInput
from streams.events import ReturnEvent, event_from_dict, event_to_dict
from streams.outbox import SyncRecord, timeline_events
from streams.projection import ProjectionConfig
from streams.reducer import Applied, apply_event
from streams.state import CustomerState
from tests.streams.strategies import event

AT = datetime(2026, 11, 1, tzinfo=UTC)
CONFIG = ProjectionConfig()


def status(word: str, at: str, event_id: str) -> ReturnEvent:
    return event(f"return.{word}", event_id=event_id, occurred_at=at, return_id="R1",
                 customer={"email": "emma@example.com"})


def deliver(*events: ReturnEvent) -> tuple[CustomerState, list[tuple[str, list[tuple[str, bool]]]]]:
    """Reduce in order; per event, its result and the (metric, backfill) entries it sends."""
    state, sent = None, []
    for item in events:
        result = apply_event(state, item)
        state = result.state
        entries = timeline_events(SyncRecord(state, item, result.applied, AT), CONFIG)
        sent.append((result.applied.value, [(entry.metric, entry.backfill) for entry in entries]))
    assert state is not None
    return state, sent


def test_a_repeat_adds_nothing_and_a_new_status_announces() -> None:
    _, sent = deliver(status("closed", "2025-03-10T10:00:00Z", "a"),
                      status("closed", "2025-03-10T10:00:01Z", "b"))
    assert sent == [("applied", [("Return Closed", False)]), ("repeated", [])]


def test_an_older_status_is_history_sent_as_backfill() -> None:
    _, sent = deliver(status("received", "2025-03-10T10:00:00Z", "a"),
                      status("approved", "2025-03-09T10:00:00Z", "b"))
    assert sent[1] == ("out_of_order", [("Return Approved", True)])


def test_a_redelivered_repeat_stays_quiet_and_a_redelivered_announcement_is_sent_again() -> None:
    first = status("closed", "2025-03-10T10:00:00Z", "a")
    repeat = status("closed", "2025-03-10T10:00:01Z", "b")
    state, _ = deliver(first, repeat)
    again = [apply_event(state, item) for item in (repeat, first)]
    assert [result.applied for result in again] == [Applied.DUPLICATE, Applied.DUPLICATE]
    assert timeline_events(SyncRecord(state, repeat, Applied.DUPLICATE, AT), CONFIG) == []
    # The first send may have been lost in a crash; Klaviyo drops the copy by unique_id.
    resent = timeline_events(SyncRecord(state, first, Applied.DUPLICATE, AT), CONFIG)
    assert [(entry.metric, entry.unique_id) for entry in resent] == [("Return Closed", "a")]


def test_a_replayed_record_goes_as_backfill() -> None:
    state, _ = deliver(status("requested", "2025-03-10T10:00:00Z", "a"))
    replayed = SyncRecord(state, status("requested", "2025-03-10T10:00:00Z", "a"), Applied.APPLIED, AT,
                          backfill=True)
    assert {entry.backfill for entry in timeline_events(replayed, CONFIG)} == {True}


def test_a_backfilled_event_goes_as_backfill_and_the_flag_round_trips() -> None:
    history = event("return.closed", event_id="old", occurred_at="2024-01-10T10:00:00Z", return_id="R9",
                    customer={"email": "emma@example.com"}, backfill=True)
    assert event_to_dict(history)["backfill"] is True
    assert "backfill" not in event_to_dict(replace(history, backfill=False)), "absent when false"
    assert event_from_dict(event_to_dict(history)) == history
    result = apply_event(None, history)
    entries = timeline_events(SyncRecord(result.state, history, result.applied, AT), CONFIG)
    assert [(entry.metric, entry.backfill) for entry in entries] == [("Return Closed", True)]


def test_backfill_must_be_a_boolean() -> None:
    with pytest.raises(RejectedInput) as rejected:
        event("return.closed", backfill="yes")
    assert rejected.value.reason is Reason.INVALID_FIELD
