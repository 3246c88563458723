"""Swap adapter: real payload shapes in, exact canonical events out."""

from __future__ import annotations

import copy
from decimal import Decimal
from typing import Any

import pytest

from streams.adapters import swap
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


@pytest.mark.parametrize("name", fixture_names("swap"))
def test_fixture_gives_exactly_the_expected_events(name: str) -> None:
    result = swap.normalize(raw_fixture("swap", name))
    assert_golden("swap", name, result)
    assert_round_trips(result.events)


def _with(name: str, **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = copy.deepcopy(fixture_json("swap", name))
    body["return"].update(changes)
    return body


def test_created_then_processed_counts_each_money_fact_once() -> None:
    names = ["return_created", "return_processed", "return_processed"]
    state = reduce_events([e for name in names for e in swap.to_events(raw_fixture("swap", name))])
    assert state is not None
    assert state.returns["r_8f2c"].status == "closed"
    assert state.refund_total == Decimal("45.0")
    assert state.store_credit_issued_total == Decimal("20.50")
    assert state.exchange_count == 1


def test_resent_snapshot_yields_identical_ids() -> None:
    first, again = (
        [e.event_id for e in swap.to_events(raw_fixture("swap", "return_processed"))] for _ in range(2)
    )
    assert first == again


@pytest.mark.parametrize(
    ("status", "shipping", "expected"),
    [
        ("Open", "Pre-Transit", EventType.RETURN_APPROVED),
        ("Open", "In-Transit", EventType.RETURN_IN_TRANSIT),
        ("Open", "Delivered", EventType.RETURN_RECEIVED),
        ("Open", None, EventType.RETURN_APPROVED),
        ("Closed", "Delivered", EventType.RETURN_CLOSED),
        ("Expired", "Pre-Transit", EventType.RETURN_EXPIRED),
        ("Cancelled", None, EventType.RETURN_CANCELLED),
    ],
)
def test_status_map(status: str, shipping: str | None, expected: EventType) -> None:
    result = swap.normalize(raw("swap", _with("return_created", status=status, shipping_status=shipping)))
    assert result.unknown_status is None
    assert [e for e in result.events if e.status_raw][-1].type is expected


@pytest.mark.parametrize("status", ["Needs Review", "On Hold"])
def test_holds_are_known_but_change_no_status(status: str) -> None:
    result = swap.normalize(raw("swap", _with("return_created", status=status)))
    assert (result.unknown_status, [e.type for e in result.events]) == (None, [EventType.RETURN_REQUESTED])


def test_unknown_status_is_reported() -> None:
    result = swap.normalize(raw("swap", _with("return_created", status="Quarantined")))
    assert result.unknown_status == "Quarantined"
    assert [e.type for e in result.events] == [EventType.RETURN_REQUESTED]


def test_refund_falls_back_to_refunded_products_when_swap_states_no_total() -> None:
    body = _with("return_processed", total_refund_value_customer_currency=None)
    refund = [e for e in swap.to_events(raw("swap", body)) if e.type is EventType.REFUND_ISSUED]
    assert [(e.event_id, e.amount) for e in refund] == [("swap:refund:r_8f2c", Decimal("45.0"))]


def test_types_fall_back_to_the_comma_separated_string() -> None:
    body = _with("return_created", type=None, type_string="Refund")
    assert swap.to_events(raw("swap", body))[0].outcome is not None


def test_single_word_name_is_a_first_name() -> None:
    body = _with("return_created", customer_name="Cher")
    customer = swap.to_events(raw("swap", body))[0].customer
    assert (customer.first_name, customer.last_name) == ("Cher", None)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"products": []}, Reason.MISSING_FIELD),
        (_with("return_created", customer_email=None), Reason.MISSING_FIELD),
        (_with("return_created", return_id=None), Reason.MISSING_FIELD),
        (_with("return_created", total="lots"), Reason.INVALID_FIELD),
        (_with("return_created", total=float("inf")), Reason.NOT_JSON),  # json.dumps writes Infinity
        (_with("return_created", type="Refund"), Reason.INVALID_FIELD),
        (_with("return_created", date_created=20240601), Reason.INVALID_FIELD),
    ],
)
def test_unusable_payloads_are_rejected_with_a_reason(body: dict[str, Any], reason: Reason) -> None:
    with pytest.raises(RejectedInput) as caught:
        swap.normalize(raw("swap", body))
    assert caught.value.reason is reason
