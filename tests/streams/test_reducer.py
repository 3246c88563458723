"""The reducer (SPEC §4): one test per rule, the active-return lifecycle, ordering, and bounds."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from decimal import Decimal
from typing import Any

import pytest

import streams.reducer as reducer
from streams import digests
from streams.events import EventType, ReturnEvent
from streams.projection import ProjectionConfig, profile_properties
from streams.reducer import Applied, apply_event, initial_state, reduce_events
from streams.state import (
    ACTIVE_STATUSES,
    RETURNED_SKUS_LIMIT,
    TERMINAL_STATUSES,
    CustomerState,
    Identity,
)
from tests.streams.strategies import event, fixture_names, load_fixture

EMMA = {"email": "emma@example.com", "first_name": "Emma", "last_name": "Johnson", "external_id": "7001"}
TEE = {"sku": "TEE-BLK-M", "quantity": 1, "value": "28.00", "reason": "Too small", "reason_parent": "Fit"}
SOCKS = {"sku": "SOCK-WHT-OS", "quantity": 2, "value": "6.50", "reason": "Changed my mind"}
CAP = {"sku": "CAP-NVY", "quantity": 1, "value": "22.00", "reason_parent": "Quality"}


def status(word: str, at: str, return_id: str = "R1", **fields: Any) -> ReturnEvent:
    fields.setdefault("event_id", f"{return_id}:{word}:{at}")
    return event(f"return.{word}", occurred_at=at, return_id=return_id, customer=EMMA, **fields)


def fact(type: str, event_id: str, at: str = "2025-03-05T12:00:00Z", **fields: Any) -> ReturnEvent:
    return event(type, event_id=event_id, occurred_at=at, customer={"email": EMMA["email"]}, **fields)


def run(*events: ReturnEvent, state: CustomerState | None = None) -> tuple[CustomerState, list[Applied]]:
    outcomes: list[Applied] = []
    for item in events:
        result = apply_event(state, item)
        state, outcomes = result.state, [*outcomes, result.applied]
    assert state is not None
    return state, outcomes


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text)


# --- the fixture scenarios end where the SPEC says --------------------------------------------

EXPECTED: dict[str, dict[str, Any]] = {
    "refund_single_return.jsonl": {
        "return_count": 1, "item_count": 3, "refund_total": Decimal("41.00"), "exchange_count": 0,
        "store_credit_issued_total": Decimal(0), "store_credit_balance": Decimal(0), "active": [],
        "first_return_at": "2025-03-03T10:15:00+00:00", "last": ("1001", "closed", "refund", "Too small"),
    },
    "exchange_single_return.jsonl": {
        "return_count": 1, "item_count": 1, "refund_total": Decimal(0), "exchange_count": 1,
        "store_credit_issued_total": Decimal(0), "store_credit_balance": Decimal(0), "active": [],
        "first_return_at": "2025-04-01T08:00:00+00:00", "last": ("58213", "closed", "exchange", "Too large"),
    },
    "store_credit_with_redemptions.jsonl": {
        "return_count": 1, "item_count": 1, "refund_total": Decimal(0), "exchange_count": 0,
        "store_credit_issued_total": Decimal("125.00"), "store_credit_balance": Decimal("25.00"),
        "active": [],
        "first_return_at": "2025-05-02T09:00:00+00:00",
        "last": ("RT-4410", "closed", "store_credit", "Not as described"),
    },
    "cancelled_rejected_expired.jsonl": {
        "return_count": 3, "item_count": 3, "refund_total": Decimal(0), "exchange_count": 0,
        "store_credit_issued_total": Decimal(0), "store_credit_balance": Decimal(0), "active": [],
        "first_return_at": "2025-06-10T11:00:00+00:00", "last": ("AS-3302", "expired", None, "Too small"),
    },
    "mixed_refund_and_store_credit.jsonl": {
        "return_count": 1, "item_count": 2, "refund_total": Decimal("45.00"), "exchange_count": 0,
        "store_credit_issued_total": Decimal("30.00"), "store_credit_balance": Decimal("30.00"), "active": [],
        "first_return_at": "2025-08-04T10:00:00+00:00", "last": ("60115", "closed", "mixed", "Too small"),
    },
    "serial_returner_active_return.jsonl": {
        "return_count": 4, "item_count": 7, "refund_total": Decimal("357.80"), "exchange_count": 0,
        "store_credit_issued_total": Decimal(0), "store_credit_balance": Decimal(0), "active": ["2004"],
        "first_return_at": "2025-01-05T09:00:00+00:00", "last": ("2004", "in_transit", "refund", "Too small"),
    },
    "out_of_order_with_duplicates.jsonl": {
        "return_count": 1, "item_count": 1, "refund_total": Decimal("59.00"), "exchange_count": 0,
        "store_credit_issued_total": Decimal(0), "store_credit_balance": Decimal(0), "active": [],
        "first_return_at": "2025-09-01T09:00:00+00:00", "last": ("61007", "closed", "refund", "Too large"),
    },
    "orders_with_a_return.jsonl": {
        "return_count": 1, "item_count": 2, "refund_total": Decimal("56.00"), "exchange_count": 0,
        "store_credit_issued_total": Decimal(0), "store_credit_balance": Decimal(0), "active": [],
        "first_return_at": "2025-03-01T09:00:00+00:00", "last": ("lr-2001", "closed", "refund", "Too small"),
    },
}  # fmt: skip


def test_every_fixture_has_expectations() -> None:
    assert sorted(EXPECTED) == fixture_names()


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_scenario_end_state(name: str) -> None:
    expected = EXPECTED[name]
    state = reduce_events(load_fixture(name))
    assert state is not None
    assert state.return_count == expected["return_count"]
    assert state.item_count == expected["item_count"]
    assert state.refund_total == expected["refund_total"]
    assert state.exchange_count == expected["exchange_count"]
    assert state.store_credit_issued_total == expected["store_credit_issued_total"]
    assert state.store_credit_balance == expected["store_credit_balance"]
    assert [record.return_id for record in state.active_returns] == expected["active"]
    assert state.first_return_at == utc(expected["first_return_at"])
    last = state.last_return
    assert last is not None
    assert (last.return_id, last.status, last.outcome, last.reason) == expected["last"]


def test_out_of_order_fixture_reports_each_delivery() -> None:
    _, outcomes = run(*load_fixture("out_of_order_with_duplicates.jsonl"))
    # approved, refund, closed, in_transit (older than closed), refund again, received (older), closed again
    assert outcomes == [
        Applied.APPLIED,
        Applied.APPLIED,
        Applied.APPLIED,
        Applied.OUT_OF_ORDER,
        Applied.DUPLICATE,
        Applied.OUT_OF_ORDER,
        Applied.DUPLICATE,
    ]


# --- state creation, idempotency, version ------------------------------------------------------


def test_first_event_creates_the_customer_state() -> None:
    item = event("return.requested", customer={"email": " Emma@Example.COM "}, tenant="acme-eu")
    result = apply_event(None, item)
    assert result.applied is Applied.APPLIED
    assert result.state.customer_key == "acme-eu/emma@example.com"
    assert result.state.identity.email == "emma@example.com"
    assert result.state.version == 1
    assert result.state.returns["R1"].fact_ids == {item.event_id}
    assert initial_state(item) == CustomerState(
        customer_key="acme-eu/emma@example.com", identity=Identity(email="emma@example.com")
    )


@pytest.mark.parametrize("event_type", [t for t in EventType if t is not EventType.ORDER_PLACED])
def test_an_applied_event_id_changes_nothing(event_type: EventType) -> None:
    item = event(event_type.value, event_id="evt-1", return_id="R1", amount="10.00", items=[TEE])
    once = apply_event(None, item).state
    again = apply_event(once, item)
    assert again.applied is Applied.DUPLICATE
    assert again.state == once
    # Another event with the same id but other content is still the same fact.
    other = event("refund.issued", event_id="evt-1", return_id="R9", amount="99.00")
    assert apply_event(once, other).state == once


def test_version_counts_applied_events_only() -> None:
    requested = status("requested", "2025-03-03T10:00:00Z")
    approved = status("approved", "2025-03-03T11:00:00Z")
    state, outcomes = run(requested, approved, requested, approved)
    assert outcomes == [Applied.APPLIED, Applied.APPLIED, Applied.DUPLICATE, Applied.DUPLICATE]
    assert state.version == 2
    assert state.returns["R1"].fact_ids == {requested.event_id, approved.event_id}


def test_out_of_order_events_are_recorded_as_applied() -> None:
    closed = status("closed", "2025-03-10T10:00:00Z")
    late = status("approved", "2025-03-03T11:00:00Z")
    state, outcomes = run(closed, late)
    assert outcomes == [Applied.APPLIED, Applied.OUT_OF_ORDER]
    assert state.version == 2
    assert apply_event(state, late).applied is Applied.DUPLICATE


# --- status events and the active-return lifecycle ---------------------------------------------


def test_requested_opens_a_return_with_its_details() -> None:
    requested = status(
        "requested",
        "2025-03-03T10:15:00Z",
        order_ref="#1001",
        amount="41.00",
        outcome="refund",
        items=[TEE, SOCKS],
    )
    state, outcomes = run(requested)
    assert outcomes == [Applied.APPLIED]
    record = state.returns["R1"]
    assert record.status == "requested"
    assert record.active and record.counted
    assert record.opened_at == record.status_at == utc("2025-03-03T10:15:00+00:00")
    assert record.order_ref == "#1001"
    assert record.skus == ("TEE-BLK-M", "SOCK-WHT-OS")
    assert record.item_count == 3
    assert record.value == Decimal("41.00")
    assert record.reason == "Too small"
    assert record.outcome == "refund"
    assert record.fact_ids == {requested.event_id}
    assert state.return_count == 1
    assert state.item_count == 3
    assert state.first_return_at == utc("2025-03-03T10:15:00+00:00")


@pytest.mark.parametrize("word", sorted(ACTIVE_STATUSES))
def test_active_statuses(word: str) -> None:
    state, _ = run(status(word, "2025-03-03T10:00:00Z"))
    assert [record.return_id for record in state.active_returns] == ["R1"]
    assert state.returns["R1"].status == word


@pytest.mark.parametrize("word", sorted(TERMINAL_STATUSES))
def test_terminal_statuses_end_the_return(word: str) -> None:
    state, outcomes = run(status("requested", "2025-03-03T10:00:00Z"), status(word, "2025-03-04T10:00:00Z"))
    assert outcomes == [Applied.APPLIED, Applied.APPLIED]
    assert state.active_returns == []
    assert state.returns["R1"].status == word
    assert state.return_count == 1, "a return is counted once, however many statuses it goes through"


def test_active_and_terminal_statuses_match_the_spec() -> None:
    assert {"requested", "approved", "in_transit", "received"} == ACTIVE_STATUSES
    assert {"closed", "rejected", "cancelled", "expired"} == TERMINAL_STATUSES


def test_full_lifecycle_moves_forward() -> None:
    words = ["requested", "approved", "in_transit", "received", "closed"]
    state: CustomerState | None = None
    for day, word in enumerate(words, start=3):
        result = apply_event(state, status(word, f"2025-03-0{day}T10:00:00Z"))
        assert result.applied is Applied.APPLIED
        state = result.state
        assert state.returns["R1"].status == word
        assert bool(state.active_returns) is (word != "closed")
    assert state is not None
    assert state.return_count == 1


def test_older_status_does_not_move_the_status_back() -> None:
    state, outcomes = run(
        status("received", "2025-03-06T10:00:00Z"), status("approved", "2025-03-04T10:00:00Z")
    )
    assert outcomes == [Applied.APPLIED, Applied.OUT_OF_ORDER]
    assert state.returns["R1"].status == "received"
    assert state.returns["R1"].status_at == utc("2025-03-06T10:00:00+00:00")


def test_a_status_the_return_already_has_is_a_repeat_that_still_records_its_details() -> None:
    opened = status("requested", "2025-03-03T10:00:00Z", items=[TEE])
    edited = status("requested", "2025-03-04T10:00:00Z", event_id="edit", items=[TEE, CAP])
    state, outcomes = run(opened, edited)
    assert outcomes == [Applied.APPLIED, Applied.REPEATED]
    record = state.returns["R1"]
    assert record.repeated_ids == {"edit"}
    assert (record.skus, state.item_count, state.return_count) == (("TEE-BLK-M", "CAP-NVY"), 2, 1)
    assert record.status_at == utc("2025-03-04T10:00:00+00:00")  # the newest version of it


def test_an_older_repeat_is_a_repeat_too_and_a_new_status_after_it_is_applied() -> None:
    state, outcomes = run(
        status("closed", "2025-03-10T10:00:00Z", event_id="closed"),
        status("closed", "2025-03-09T10:00:00Z", event_id="updated"),
        status("requested", "2025-03-12T10:00:00Z", event_id="reopened"),
        status("closed", "2025-03-14T10:00:00Z", event_id="closed-again"),
    )
    assert outcomes == [Applied.APPLIED, Applied.REPEATED, Applied.APPLIED, Applied.APPLIED]
    assert state.returns["R1"].repeated_ids == {"updated"}
    assert state.returns["R1"].status == "closed"


def test_late_event_after_close_does_not_reopen_the_return() -> None:
    closed = status("closed", "2025-03-10T10:00:00Z")
    late = [status(word, f"2025-03-0{day}T10:00:00Z") for day, word in ((3, "requested"), (6, "in_transit"))]
    state, outcomes = run(closed, *late)
    assert outcomes == [Applied.APPLIED, Applied.OUT_OF_ORDER, Applied.OUT_OF_ORDER]
    assert state.returns["R1"].status == "closed"
    assert state.active_returns == []
    assert state.return_count == 1


def test_late_event_still_contributes_what_is_newer_or_missing() -> None:
    # The close carries no items; the requested event arriving after it is the only one that does.
    closed = status("closed", "2025-03-10T10:00:00Z")
    requested = status("requested", "2025-03-03T10:00:00Z", items=[TEE, SOCKS], order_ref="#1001")
    state, _ = run(closed, requested)
    record = state.returns["R1"]
    assert record.status == "closed"
    assert record.opened_at == utc("2025-03-03T10:00:00+00:00"), "opened_at is the earliest status time"
    assert (record.item_count, record.skus, record.order_ref) == (3, ("TEE-BLK-M", "SOCK-WHT-OS"), "#1001")
    assert state.item_count == 3
    assert state.first_return_at == utc("2025-03-03T10:00:00+00:00")


def test_a_newer_status_wins_even_if_earlier_in_the_lifecycle() -> None:
    # SPEC §4: a return's status moves by occurred_at, not by lifecycle position.
    state, outcomes = run(
        status("closed", "2025-03-10T10:00:00Z"), status("requested", "2025-03-12T10:00:00Z")
    )
    assert outcomes == [Applied.APPLIED, Applied.APPLIED]
    assert state.returns["R1"].status == "requested"
    assert state.returns["R1"].opened_at == utc("2025-03-10T10:00:00+00:00")


@pytest.mark.parametrize(
    ("first", "second", "winner"),
    [
        ("requested", "approved", "approved"),
        ("received", "in_transit", "received"),
        ("closed", "received", "closed"),
        ("requested", "cancelled", "cancelled"),
    ],
)
def test_equal_timestamps_resolve_forward_through_the_lifecycle(first: str, second: str, winner: str) -> None:
    at = "2025-03-05T10:00:00Z"
    for order in ((first, second), (second, first)):
        state, _ = run(*(status(word, at) for word in order))
        assert state.returns["R1"].status == winner, order


def test_equal_timestamp_and_rank_resolve_by_event_id() -> None:
    at = "2025-03-05T10:00:00Z"
    cancelled = status("cancelled", at, event_id="swap:R1:b")
    expired = status("expired", at, event_id="swap:R1:a")
    for order, second in (
        ((cancelled, expired), Applied.OUT_OF_ORDER),
        ((expired, cancelled), Applied.APPLIED),
    ):
        state, outcomes = run(*order)
        assert state.returns["R1"].status == "cancelled", "the greater event id wins a full tie"
        assert outcomes == [Applied.APPLIED, second]


def test_status_event_outcome_is_recorded() -> None:
    state, _ = run(status("approved", "2025-03-03T10:00:00Z", outcome="exchange"))
    assert state.returns["R1"].outcome == "exchange"


# --- money facts -----------------------------------------------------------------------------


def test_refund_adds_to_the_total_and_sets_the_outcome() -> None:
    state, outcomes = run(
        status("requested", "2025-03-03T10:00:00Z"),
        fact("refund.issued", "loop:refund:1", return_id="R1", amount="28.00"),
        fact("refund.issued", "loop:refund:2", return_id="R1", amount="13.00"),
    )
    assert outcomes == [Applied.APPLIED] * 3
    assert state.refund_total == Decimal("41.00")
    assert state.returns["R1"].outcome == "refund"
    # Money facts are remembered by digest for good, not on the return (which may be settled).
    assert digests.count(state.fact_digests) == 2
    for fact_id in ("loop:refund:1", "loop:refund:2"):
        assert digests.contains(state.fact_digests, digests.digest(fact_id))


def test_refund_before_its_return_is_kept_on_an_uncounted_record() -> None:
    state, _ = run(fact("refund.issued", "loop:refund:1", return_id="R1", amount="28.00"))
    record = state.returns["R1"]
    assert not record.counted and not record.active
    assert state.return_count == 0
    assert state.last_return is None
    assert state.first_return_at is None
    assert state.refund_total == Decimal("28.00")
    state, _ = run(status("requested", "2025-03-03T10:00:00Z", items=[TEE]), state=state)
    assert state.return_count == 1
    assert state.item_count == 1
    assert state.returns["R1"].outcome == "refund"


def test_refund_without_a_return_id_counts_without_a_record() -> None:
    state, _ = run(fact("refund.issued", "shopify:refund:9", amount="5.00"))
    assert state.refund_total == Decimal("5.00")
    assert state.returns == {}


def test_refund_without_an_amount_adds_nothing() -> None:
    state, outcomes = run(fact("refund.issued", "shopify:refund:9", return_id="R1"))
    assert outcomes == [Applied.APPLIED]
    assert state.refund_total == Decimal(0)
    assert state.returns["R1"].outcome == "refund"


def test_money_totals_are_exact_decimals() -> None:
    refunds = [fact("refund.issued", f"r{n}", amount="0.10") for n in range(3)]
    state, _ = run(*refunds)
    assert state.refund_total == Decimal("0.30")
    assert str(state.refund_total) == "0.30"


def test_exchange_counts_once_per_fact() -> None:
    exchange = fact("exchange.created", "loop:exchange:7", return_id="R1", new_order_ref="#EXC-1")
    state, outcomes = run(exchange, exchange, fact("exchange.created", "loop:exchange:8", return_id="R1"))
    assert outcomes == [Applied.APPLIED, Applied.DUPLICATE, Applied.APPLIED]
    assert state.exchange_count == 2
    assert state.returns["R1"].outcome == "exchange"


def test_store_credit_issued_and_redeemed() -> None:
    state, _ = run(
        fact("store_credit.issued", "redo:credit:1", return_id="R1", amount="125.00"),
        fact("store_credit.redeemed", "redo:redeem:1", amount="60.00"),
    )
    assert state.store_credit_issued_total == Decimal("125.00")
    assert state.store_credit_redeemed_total == Decimal("60.00")
    assert state.store_credit_balance == Decimal("65.00")
    assert state.returns["R1"].outcome == "store_credit"


def test_store_credit_balance_is_never_negative() -> None:
    state, _ = run(
        fact("store_credit.issued", "c1", return_id="R1", amount="20.00"),
        fact("store_credit.redeemed", "d1", amount="50.00"),
    )
    assert state.store_credit_balance == Decimal(0)
    assert state.store_credit_redeemed_total == Decimal("50.00"), "the redemption is kept, not clipped"


def test_redemption_before_issue_waits_for_the_issue() -> None:
    redeemed = fact("store_credit.redeemed", "d1", amount="30.00")
    issued = fact("store_credit.issued", "c1", return_id="R1", amount="50.00")
    state, _ = run(redeemed)
    assert state.store_credit_balance == Decimal(0)
    state, _ = run(issued, state=state)
    assert state.store_credit_balance == Decimal("20.00")
    assert run(issued, redeemed)[0].store_credit_balance == state.store_credit_balance


def test_redemption_does_not_touch_return_outcomes() -> None:
    state, _ = run(fact("store_credit.redeemed", "d1", return_id="R1", amount="5.00"))
    assert state.returns == {}


def test_money_facts_are_additive_in_any_order() -> None:
    facts = [
        fact("refund.issued", "r1", return_id="R1", amount="10.00"),
        fact("store_credit.issued", "c1", return_id="R1", amount="5.50"),
        fact("store_credit.redeemed", "d1", amount="7.25"),
        fact("exchange.created", "x1", return_id="R2"),
        fact("refund.issued", "r2", return_id="R2", amount="0.45"),
    ]
    forward, _ = run(*facts)
    backward, _ = run(*reversed(facts))
    for name in ("refund_total", "exchange_count", "store_credit_issued_total", "store_credit_balance"):
        assert getattr(forward, name) == getattr(backward, name), name
    assert forward.refund_total == Decimal("10.45")
    assert forward.store_credit_balance == Decimal(0)


def test_a_money_fact_is_a_duplicate_at_any_age_even_after_its_return_settled() -> None:
    refund = fact("refund.issued", "loop:refund:1", return_id="R0", amount="28.00")
    redeemed = fact("store_credit.redeemed", "redeem:1", amount="3.00")
    history = [status("closed", "2024-01-01T10:00:00Z", return_id="R0"), refund, redeemed]
    for n in range(1, 2 * reducer.CLOSED_KEPT + 1):
        history.append(status("closed", f"2024-02-{n:02d}T10:00:00Z", return_id=f"R{n}"))
    state, _ = run(*history)
    assert "R0" not in state.returns, "settled"
    for again in (refund, redeemed):
        result = apply_event(state, again)
        assert result.applied is Applied.DUPLICATE, again.event_id
        assert result.state == state
    assert state.refund_total == Decimal("28.00")
    assert state.store_credit_redeemed_total == Decimal("3.00")


def test_money_facts_cost_eight_bytes_each() -> None:
    state, _ = run(*(fact("store_credit.redeemed", f"d{n}", amount="1") for n in range(5)))
    assert len(state.fact_digests) == 5 * digests.SIZE
    assert state.version == 5


def test_item_restocked_changes_nothing_the_customer_sees() -> None:
    before, _ = run(status("received", "2025-03-06T10:00:00Z", items=[TEE]))
    restock = fact("item.restocked", "restock:1", return_id="R1", items=[{"sku": "TEE-BLK-M"}])
    result = apply_event(before, restock)
    assert result.applied is Applied.APPLIED
    config = ProjectionConfig()
    assert profile_properties(result.state, config) == profile_properties(before, config)
    assert result.state.returns["R1"].fact_ids == before.returns["R1"].fact_ids | {"restock:1"}
    assert apply_event(result.state, restock).applied is Applied.DUPLICATE


# --- outcome ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("facts", "expected"),
    [
        ([("refund.issued", None)], "refund"),
        ([("exchange.created", None)], "exchange"),
        ([("store_credit.issued", None)], "store_credit"),
        ([("refund.issued", None), ("refund.issued", None)], "refund"),
        ([("refund.issued", None), ("exchange.created", None)], "mixed"),
        ([("refund.issued", None), ("store_credit.issued", None)], "mixed"),
        ([("return.approved", "refund"), ("store_credit.issued", None)], "mixed"),
        ([("return.approved", "mixed")], "mixed"),
        ([("return.approved", "exchange"), ("exchange.created", None)], "exchange"),
        ([("return.approved", None)], None),
    ],
)
def test_outcome_is_the_union_of_facts(facts: list[tuple[str, str | None]], expected: str | None) -> None:
    events = [
        event(
            type_,
            event_id=f"e{n}",
            return_id="R1",
            amount="1.00",
            **({"outcome": outcome} if outcome else {}),
        )
        for n, (type_, outcome) in enumerate(facts)
    ]
    state, _ = run(*events)
    assert state.returns["R1"].outcome == expected


# --- items, details, counts ------------------------------------------------------------------


def test_item_count_follows_the_newest_snapshot() -> None:
    requested = status("requested", "2025-03-03T10:00:00Z", items=[TEE, SOCKS])
    approved = status("approved", "2025-03-04T10:00:00Z", items=[TEE])  # socks taken off the return
    state, _ = run(requested)
    assert state.item_count == 3
    state, _ = run(approved, state=state)
    assert state.item_count == 1
    assert state.returns["R1"].skus == ("TEE-BLK-M",)
    # The older snapshot arriving again (new id: a resend) does not override the newer one.
    resend = replace(requested, event_id="R1:requested:resend")
    state, outcomes = run(resend, state=state)
    assert outcomes == [Applied.OUT_OF_ORDER]
    assert state.item_count == 1


def test_status_without_items_keeps_the_known_items() -> None:
    state, _ = run(
        status("requested", "2025-03-03T10:00:00Z", items=[TEE, SOCKS], amount="41.00"),
        status("approved", "2025-03-04T10:00:00Z"),
        status("closed", "2025-03-08T10:00:00Z"),
    )
    record = state.returns["R1"]
    assert (record.item_count, record.skus, record.value, record.reason) == (
        3,
        ("TEE-BLK-M", "SOCK-WHT-OS"),
        Decimal("41.00"),
        "Too small",
    )
    assert state.item_count == 3


def test_details_do_not_depend_on_delivery_order() -> None:
    # Regression: one stamp for all details meant a newer event carrying only an amount made the
    # older event carrying the items be ignored when it arrived second: item_count stayed 0.
    requested = status("requested", "2025-03-03T10:00:00Z", items=[TEE, SOCKS], order_ref="#1001")
    approved = status("approved", "2025-03-04T10:00:00Z", amount="35.00")
    forward, _ = run(requested, approved)
    backward, _ = run(approved, requested)
    for state in (forward, backward):
        record = state.returns["R1"]
        assert record.item_count == 3
        assert record.skus == ("TEE-BLK-M", "SOCK-WHT-OS")
        assert record.reason == "Too small"
        assert record.value == Decimal("35.00")
        assert record.order_ref == "#1001"
        assert state.item_count == 3
    assert forward.returns == backward.returns


def test_each_detail_comes_from_the_newest_event_carrying_it() -> None:
    events = [
        status("requested", "2025-03-03T10:00:00Z", items=[TEE], order_ref="#1", amount="28.00"),
        status("approved", "2025-03-04T10:00:00Z", items=[SOCKS, CAP]),
        status("in_transit", "2025-03-05T10:00:00Z", amount="20.00"),
        status("received", "2025-03-06T10:00:00Z", order_ref="#1-B"),
    ]
    for order in (events, events[::-1], [events[2], events[0], events[3], events[1]]):
        state, _ = run(*order)
        record = state.returns["R1"]
        assert record.skus == ("SOCK-WHT-OS", "CAP-NVY")
        assert record.item_count == 3
        assert record.reason == "Changed my mind"  # the newest items that carry a reason
        assert record.value == Decimal("20.00")
        assert record.order_ref == "#1-B"


def test_reason_falls_back_to_the_parent_reason() -> None:
    state, _ = run(status("requested", "2025-03-03T10:00:00Z", items=[CAP]))
    assert state.returns["R1"].reason == "Quality"


def test_value_from_items_when_the_event_has_no_amount() -> None:
    state, _ = run(status("requested", "2025-03-03T10:00:00Z", items=[TEE, SOCKS]))
    assert state.returns["R1"].value == Decimal("41.00")


def test_money_fact_amount_is_not_the_return_value() -> None:
    state, _ = run(
        status("requested", "2025-03-03T10:00:00Z", amount="41.00"),
        fact("refund.issued", "r1", return_id="R1", amount="30.00", order_ref="#1001"),
    )
    assert state.returns["R1"].value == Decimal("41.00")
    assert state.returns["R1"].order_ref == "#1001", "a money fact may name the order"


def test_item_counts_add_up_across_returns() -> None:
    state, _ = run(
        status("requested", "2025-03-03T10:00:00Z", return_id="R1", items=[TEE, SOCKS]),
        status("requested", "2025-03-04T10:00:00Z", return_id="R2", items=[CAP]),
        status("approved", "2025-03-05T10:00:00Z", return_id="R1", items=[SOCKS]),
    )
    assert state.item_count == 2 + 1
    assert state.return_count == 2


def test_first_return_at_is_the_earliest_status_of_any_return() -> None:
    state, _ = run(
        status("requested", "2025-03-05T10:00:00Z", return_id="R2"),
        status("closed", "2025-03-09T10:00:00Z", return_id="R1"),
    )
    assert state.first_return_at == utc("2025-03-05T10:00:00+00:00")
    state, _ = run(status("requested", "2025-03-01T10:00:00Z", return_id="R1"), state=state)
    assert state.first_return_at == utc("2025-03-01T10:00:00+00:00")
    state, _ = run(fact("refund.issued", "r-old", at="2024-01-01T00:00:00Z", return_id="R3"), state=state)
    assert state.first_return_at == utc("2025-03-01T10:00:00+00:00"), "money facts do not open a return"


# --- last return, returned SKUs, active SKUs ----------------------------------------------------


def test_last_return_is_the_most_recently_opened() -> None:
    state, _ = run(
        status("requested", "2025-03-03T10:00:00Z", return_id="R1", items=[TEE], outcome="refund"),
        status("requested", "2025-03-08T10:00:00Z", return_id="R2", items=[CAP]),
        status("closed", "2025-03-20T10:00:00Z", return_id="R1"),  # later activity on the older return
        fact("exchange.created", "x2", return_id="R2"),
    )
    last = state.last_return
    assert last is not None
    assert (last.return_id, last.status, last.outcome, last.reason) == (
        "R2",
        "requested",
        "exchange",
        "Quality",
    )
    assert last.status_at == utc("2025-03-08T10:00:00+00:00")


def test_last_return_ties_on_opened_at_break_by_return_id() -> None:
    at = "2025-03-03T10:00:00Z"
    state, _ = run(status("requested", at, return_id="R2"), status("requested", at, return_id="R1"))
    assert state.last_return is not None and state.last_return.return_id == "R2"


def test_returned_skus_most_recent_first_each_once() -> None:
    state, _ = run(
        status("requested", "2025-03-03T10:00:00Z", return_id="R1", items=[TEE, SOCKS]),
        status("requested", "2025-03-09T10:00:00Z", return_id="R3", items=[CAP, TEE]),
        status("requested", "2025-03-05T10:00:00Z", return_id="R2", items=[SOCKS]),
        status("closed", "2025-03-10T10:00:00Z", return_id="R2"),
    )
    assert state.returned_skus == ["CAP-NVY", "TEE-BLK-M", "SOCK-WHT-OS"]


def test_returned_skus_are_bounded() -> None:
    events = [
        status("requested", f"2025-03-{day:02d}T10:00:00Z", return_id=f"R{day}",
               items=[{"sku": f"SKU-{day}-{n}"} for n in range(3)])
        for day in range(1, 29)
    ]  # fmt: skip
    state, _ = run(*events)
    skus = state.returned_skus
    assert len(skus) == RETURNED_SKUS_LIMIT == 50
    assert skus[:3] == ["SKU-28-0", "SKU-28-1", "SKU-28-2"]
    assert "SKU-1-0" not in skus


def test_active_returns_are_ordered_by_opening() -> None:
    state, _ = run(
        status("approved", "2025-03-09T10:00:00Z", return_id="B"),
        status("requested", "2025-03-03T10:00:00Z", return_id="C"),
        status("requested", "2025-03-05T10:00:00Z", return_id="A"),
        status("cancelled", "2025-03-06T10:00:00Z", return_id="A"),
    )
    assert [record.return_id for record in state.active_returns] == ["C", "B"]


# --- identity ----------------------------------------------------------------------------------


def test_identity_comes_from_the_newest_event_carrying_each_field() -> None:
    named = event("return.requested", event_id="e1", occurred_at="2025-03-03T10:00:00Z", customer=EMMA)
    renamed = event(
        "return.approved",
        event_id="e2",
        occurred_at="2025-03-04T10:00:00Z",
        customer={"email": "emma@example.com", "last_name": "Johnson-Lee"},
    )
    bare = event(
        "refund.issued", event_id="e3", occurred_at="2025-03-09T10:00:00Z", customer="emma@example.com"
    )
    expected = ("emma@example.com", "7001", "Emma", "Johnson-Lee")
    for order in ((named, renamed, bare), (bare, renamed, named), (renamed, bare, named)):
        # Regression: one stamp for the whole identity lost the first name when `renamed` came first.
        identity = run(*order)[0].identity
        assert (identity.email, identity.external_id, identity.first_name, identity.last_name) == expected


# --- settling: bounded state over any history ---------------------------------------------------


def test_settling_keeps_the_most_recently_opened_closed_returns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reducer, "CLOSED_KEPT", 2)
    state, _ = run(
        status("closed", "2025-03-01T10:00:00Z", return_id="old", items=[TEE]),
        status("requested", "2025-02-01T10:00:00Z", return_id="oldest-but-open"),
        status("closed", "2025-03-02T10:00:00Z", return_id="newer"),
        status("closed", "2025-03-03T10:00:00Z", return_id="newest"),
    )
    assert set(state.returns) == {"oldest-but-open", "newer", "newest"}
    # Lifetime figures are not undone by settling a record.
    assert state.return_count == 4
    assert state.item_count == 1
    assert state.first_return_at == utc("2025-02-01T10:00:00+00:00")
    assert state.returned_skus == ["TEE-BLK-M"]
    assert digests.count(state.settled_returns) == 1


def test_an_event_for_a_settled_return_never_reopens_or_recounts_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reducer, "CLOSED_KEPT", 1)
    state, _ = run(
        status("requested", "2025-03-01T10:00:00Z", return_id="A", items=[TEE]),
        status("closed", "2025-03-05T10:00:00Z", return_id="A"),
        status("closed", "2025-03-06T10:00:00Z", return_id="B"),
    )
    assert "A" not in state.returns
    for late in (
        status("approved", "2025-03-02T10:00:00Z", return_id="A"),  # late, older
        status("requested", "2025-03-09T10:00:00Z", return_id="A", event_id="A:again"),  # re-sent, newer
        status("closed", "2025-03-05T10:00:00Z", return_id="A"),  # redelivered
    ):
        result = apply_event(state, late)
        assert result.applied is Applied.OUT_OF_ORDER
        assert result.state.returns == state.returns
        assert (result.state.return_count, result.state.item_count) == (2, 1)
        assert not result.state.active_returns
    redelivered = status("closed", "2025-03-05T10:00:00Z", return_id="A")
    assert apply_event(state, redelivered).state == state, "a redelivery changes nothing, not the version"
    # The one thing a late event can still tell: the customer's first return opened earlier.
    first = status("requested", "2025-02-01T10:00:00Z", return_id="A", event_id="A:first")
    earlier = apply_event(state, first)
    assert earlier.state.first_return_at == utc("2025-02-01T10:00:00+00:00")
    assert earlier.state.return_count == 2


def test_settling_never_touches_an_active_return(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reducer, "CLOSED_KEPT", 1)
    state, _ = run(*(status("requested", f"2025-03-0{n}T10:00:00Z", return_id=f"R{n}") for n in range(1, 5)))
    assert len(state.returns) == 4
    assert len(state.active_returns) == 4


def test_uncounted_returns_beyond_the_bound_are_dropped_but_their_money_stays(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(reducer, "CLOSED_KEPT", 1)
    monkeypatch.setattr(reducer, "UNCOUNTED_KEPT", 2)
    refunds = [fact("refund.issued", f"r{n}", return_id=f"pending-{n}", amount="5.00") for n in range(1, 4)]
    state, _ = run(*refunds)
    assert set(state.returns) == {"pending-2", "pending-3"}
    assert state.refund_total == Decimal("15.00")
    assert apply_event(state, refunds[0]).applied is Applied.DUPLICATE
    # Its status events come after all: the return counts, as a new one.
    late = apply_event(state, status("closed", "2025-03-01T10:00:00Z", return_id="pending-1")).state
    assert late.return_count == 1


def test_one_event_with_thousands_of_items_keeps_a_bounded_sku_list() -> None:
    items = [{"sku": f"SKU-{n}", "quantity": 1} for n in range(20_000)]
    state, _ = run(status("requested", "2025-03-01T10:00:00Z", items=items))
    assert len(state.returns["R1"].skus) == reducer.RETURN_SKUS_LIMIT
    assert state.item_count == 20_000


def test_reduce_events_of_nothing_is_the_given_state() -> None:
    assert reduce_events([]) is None
    state, _ = run(status("requested", "2025-03-03T10:00:00Z"))
    assert reduce_events([], state) is state
