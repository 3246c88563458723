"""The canonical event (SPEC §3): every validation rule, normalisation, and the wire round trip."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.errors import Reason, RejectedInput
from streams.events import (
    DEFAULT_MAX_FUTURE_SKEW,
    DEFAULT_TENANT,
    SOURCES,
    EventType,
    Outcome,
    ReturnEvent,
    check_time,
    customer_key,
    event_from_dict,
    event_to_dict,
    format_time,
    normalise_email,
    parse_money,
    parse_time,
)
from tests.streams.strategies import FIXTURES, customer_streams, fixture_names, load_fixture

STATUS_TYPES = [t for t in EventType if t.value.startswith("return.")]
FACT_TYPES = [t for t in EventType if not t.value.startswith("return.")]


@pytest.fixture
def raw() -> dict[str, Any]:
    """A real requested event (Shopify, two items), as a producer would send it."""
    line = (FIXTURES / "refund_single_return.jsonl").read_text().splitlines()[0]
    obj: dict[str, Any] = orjson.loads(line)
    assert obj["type"] == "return.requested"
    return obj


def rejected(obj: Any) -> RejectedInput:
    with pytest.raises(RejectedInput) as info:
        event_from_dict(obj)
    return info.value


# --- the fixtures themselves ------------------------------------------------------------------


@pytest.mark.parametrize("name", fixture_names())
def test_every_fixture_line_is_a_valid_canonical_event(name: str) -> None:
    events = load_fixture(name)
    assert events, name
    assert len({event.customer_key for event in events}) == 1, "one customer per fixture file"


def test_fixture_set_covers_every_event_type() -> None:
    seen = {event.type for name in fixture_names() for event in load_fixture(name)}
    assert seen == set(EventType)


def test_parses_every_field_of_a_real_event(raw: dict[str, Any]) -> None:
    event = event_from_dict(raw)
    assert event.event_id == "shopify:evt:5c1f0e2a-requested"
    assert event.type is EventType.RETURN_REQUESTED
    assert event.occurred_at == datetime(2025, 3, 3, 10, 15, tzinfo=UTC)
    assert event.tenant == "default"
    assert event.source == "shopify"
    assert event.return_id == "1001"
    assert event.order_ref == "#1001"
    assert event.status_raw == "requested"
    assert event.outcome is Outcome.REFUND
    assert event.amount == Decimal("41.00")
    assert event.currency == "USD"
    assert event.customer.email == "emma.johnson@example.com"
    assert event.customer.external_id == "gid://shopify/Customer/7001"
    assert (event.customer.first_name, event.customer.last_name) == ("Emma", "Johnson")
    first, second = event.items
    assert (first.sku, first.product_name, first.variant_name) == ("TEE-BLK-M", "Classic Tee", "Black / M")
    assert (first.quantity, first.value, first.reason, first.reason_parent) == (
        1,
        Decimal("28.00"),
        "Too small",
        "Fit",
    )
    assert first.outcome == "refund"
    assert (second.sku, second.quantity, second.value) == ("SOCK-WHT-OS", 2, Decimal("6.50"))


# --- the object and required fields ---------------------------------------------------------


@pytest.mark.parametrize("value", [[], "event", 42, None, True])
def test_not_an_object_is_rejected(value: Any) -> None:
    assert rejected(value).reason is Reason.NOT_AN_OBJECT


@pytest.mark.parametrize("name", ["event_id", "type", "occurred_at", "customer"])
def test_missing_required_field(raw: dict[str, Any], name: str) -> None:
    del raw[name]
    error = rejected(raw)
    assert error.reason is Reason.MISSING_FIELD
    assert name in error.detail


@pytest.mark.parametrize("name", ["event_id", "type"])
@pytest.mark.parametrize("blank", ["", "   ", None])
def test_blank_required_text_counts_as_missing(raw: dict[str, Any], name: str, blank: str | None) -> None:
    raw[name] = blank
    assert rejected(raw).reason is Reason.MISSING_FIELD


@pytest.mark.parametrize(
    "name", ["event_id", "type", "tenant", "source", "return_id", "order_ref", "currency"]
)
@pytest.mark.parametrize("bad", [["x"], {"x": 1}, True, 1.5])
def test_text_field_of_wrong_type_is_invalid(raw: dict[str, Any], name: str, bad: Any) -> None:
    raw[name] = bad
    error = rejected(raw)
    assert error.reason is Reason.INVALID_FIELD
    assert name in error.detail


def test_numeric_ids_are_taken_as_text(raw: dict[str, Any]) -> None:
    raw |= {"event_id": 8123, "return_id": 1001, "order_ref": 1001}
    event = event_from_dict(raw)
    assert (event.event_id, event.return_id, event.order_ref) == ("8123", "1001", "1001")


def test_text_is_trimmed_and_empty_optional_text_is_absent(raw: dict[str, Any]) -> None:
    raw |= {"event_id": "  evt-1 ", "order_ref": " #1001 ", "status_raw": "", "new_order_ref": "   "}
    event = event_from_dict(raw)
    assert event.event_id == "evt-1"
    assert event.order_ref == "#1001"
    assert event.status_raw is None
    assert event.new_order_ref is None


def test_event_id_length_bound(raw: dict[str, Any]) -> None:
    raw["event_id"] = "e" * 240
    assert event_from_dict(raw).event_id == "e" * 240
    raw["event_id"] = "e" * 241
    error = rejected(raw)
    assert error.reason is Reason.INVALID_FIELD
    assert "event_id" in error.detail


# --- type, tenant, source, return id ----------------------------------------------------------


@pytest.mark.parametrize("value", ["return.shipped", "refund", "RETURN.REQUESTED", "return.unknown"])
def test_unknown_type(raw: dict[str, Any], value: str) -> None:
    raw["type"] = value
    assert rejected(raw).reason is Reason.UNKNOWN_TYPE


@pytest.mark.parametrize("event_type", list(EventType))
def test_every_canonical_type_parses(raw: dict[str, Any], event_type: EventType) -> None:
    raw["type"] = event_type.value
    raw["item_count"] = 3  # what order.placed needs besides the return event's fields
    assert event_from_dict(raw).type is event_type


@pytest.mark.parametrize("event_type", STATUS_TYPES)
def test_return_id_required_for_status_types(raw: dict[str, Any], event_type: EventType) -> None:
    raw["type"] = event_type.value
    del raw["return_id"]
    error = rejected(raw)
    assert error.reason is Reason.MISSING_FIELD
    assert "return_id" in error.detail


@pytest.mark.parametrize("event_type", FACT_TYPES)
def test_return_id_optional_for_fact_types(raw: dict[str, Any], event_type: EventType) -> None:
    raw["type"] = event_type.value
    raw["item_count"] = 3
    del raw["return_id"]
    assert event_from_dict(raw).return_id is None


def test_event_type_status_words() -> None:
    assert [t.status for t in STATUS_TYPES] == [
        "requested",
        "approved",
        "rejected",
        "cancelled",
        "expired",
        "in_transit",
        "received",
        "closed",
    ]
    assert all(t.is_status for t in STATUS_TYPES)
    assert not any(t.is_status for t in FACT_TYPES)


@pytest.mark.parametrize("value", [None, ""])
def test_tenant_defaults(raw: dict[str, Any], value: str | None) -> None:
    raw["tenant"] = value
    assert event_from_dict(raw).tenant == DEFAULT_TENANT == "default"


@pytest.mark.parametrize("value", ["acme eu", "acme/eu", "ac:me", "t" * 65, "é"])
def test_invalid_tenant(raw: dict[str, Any], value: str) -> None:
    raw["tenant"] = value
    assert rejected(raw).reason is Reason.INVALID_FIELD


@pytest.mark.parametrize("value", ["acme-eu", "Brand_2.0", "t" * 64])
def test_valid_tenant(raw: dict[str, Any], value: str) -> None:
    raw["tenant"] = value
    assert event_from_dict(raw).tenant == value


def test_source_defaults_to_api(raw: dict[str, Any]) -> None:
    del raw["source"]
    assert event_from_dict(raw).source == "api"


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_every_known_source(raw: dict[str, Any], source: str) -> None:
    raw["source"] = source
    assert event_from_dict(raw).source == source


@pytest.mark.parametrize("source", ["narvar", "Loop", "webhook"])
def test_unknown_source(raw: dict[str, Any], source: str) -> None:
    raw["source"] = source
    assert rejected(raw).reason is Reason.UNKNOWN_SOURCE


# --- outcome, currency -----------------------------------------------------------------------


@pytest.mark.parametrize("outcome", list(Outcome))
def test_every_outcome(raw: dict[str, Any], outcome: Outcome) -> None:
    raw["outcome"] = outcome.value
    assert event_from_dict(raw).outcome is outcome


def test_absent_outcome(raw: dict[str, Any]) -> None:
    raw["outcome"] = ""
    assert event_from_dict(raw).outcome is None


@pytest.mark.parametrize("value", ["credit", "Refund", "gift_card"])
def test_unknown_outcome(raw: dict[str, Any], value: str) -> None:
    raw["outcome"] = value
    assert rejected(raw).reason is Reason.INVALID_FIELD


@pytest.mark.parametrize("value", ["usd", "US", "EURO", "€", "12A"])
def test_invalid_currency(raw: dict[str, Any], value: str) -> None:
    raw["currency"] = value
    assert rejected(raw).reason is Reason.INVALID_FIELD


def test_currency_is_optional(raw: dict[str, Any]) -> None:
    del raw["currency"]
    assert event_from_dict(raw).currency is None


# --- time ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2025-03-03T10:15:00Z", datetime(2025, 3, 3, 10, 15, tzinfo=UTC)),
        ("2025-03-03t10:15:00z", datetime(2025, 3, 3, 10, 15, tzinfo=UTC)),
        ("2025-03-03T12:15:00+02:00", datetime(2025, 3, 3, 10, 15, tzinfo=UTC)),
        ("2025-03-03T05:15:00.250-05:00", datetime(2025, 3, 3, 10, 15, 0, 250000, tzinfo=UTC)),
    ],
)
def test_time_is_read_into_utc(raw: dict[str, Any], text: str, expected: datetime) -> None:
    raw["occurred_at"] = text
    occurred_at = event_from_dict(raw).occurred_at
    assert occurred_at == expected
    assert occurred_at.utcoffset() == timedelta(0)


@pytest.mark.parametrize("text", ["2025-03-03T10:15:00", "2025-03-03 10:15:00", "2025-03-03"])
def test_naive_time_is_refused_not_guessed(raw: dict[str, Any], text: str) -> None:
    raw["occurred_at"] = text
    error = rejected(raw)
    assert error.reason is Reason.INVALID_FIELD
    assert "timezone" in error.detail


@pytest.mark.parametrize("value", ["yesterday", "", "2025-13-01T00:00:00Z", 1741000000, 1741000000.5, ["x"]])
def test_unparseable_time(raw: dict[str, Any], value: Any) -> None:
    raw["occurred_at"] = value
    assert rejected(raw).reason is Reason.INVALID_FIELD


@pytest.mark.parametrize("text", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_time_outside_the_utc_range_is_rejected_not_raised(raw: dict[str, Any], text: str) -> None:
    # Regression: astimezone(UTC) raised OverflowError, which is not a dead-letter reason.
    raw["occurred_at"] = text
    assert rejected(raw).reason is Reason.INVALID_FIELD


def test_format_time_writes_utc_with_z() -> None:
    cet = timezone(timedelta(hours=1))
    assert format_time(datetime(2025, 3, 3, 11, 15, tzinfo=cet)) == "2025-03-03T10:15:00Z"
    assert format_time(datetime(2025, 3, 3, 10, 15, 0, 5, tzinfo=UTC)) == "2025-03-03T10:15:00.000005Z"
    assert parse_time(format_time(datetime(2025, 3, 3, 10, 15, tzinfo=UTC)), "t") == datetime(
        2025, 3, 3, 10, 15, tzinfo=UTC
    )


# --- customer and email ----------------------------------------------------------------------


def test_email_is_trimmed_and_lower_cased(raw: dict[str, Any]) -> None:
    raw["customer"]["email"] = "  Emma.JOHNSON@Example.COM\t"
    event = event_from_dict(raw)
    assert event.customer.email == "emma.johnson@example.com"
    assert event.customer_key == "default/emma.johnson@example.com"


def test_customer_key_uses_tenant_and_normalised_email(raw: dict[str, Any]) -> None:
    raw["tenant"] = "acme-eu"
    assert event_from_dict(raw).customer_key == "acme-eu/emma.johnson@example.com"
    assert customer_key("acme-eu", " Emma.Johnson@Example.com ") == "acme-eu/emma.johnson@example.com"
    assert normalise_email(" A@B.CO ") == "a@b.co"


@pytest.mark.parametrize(
    "value", [{}, {"email": None}, {"email": ""}, {"email": "   "}, {"first_name": "Emma"}]
)
def test_missing_email(raw: dict[str, Any], value: dict[str, Any]) -> None:
    raw["customer"] = value
    error = rejected(raw)
    assert error.reason is Reason.MISSING_FIELD
    assert "email" in error.detail


@pytest.mark.parametrize("value", ["emma@example.com", ["emma@example.com"], 7001])
def test_customer_that_is_not_an_object_is_invalid(raw: dict[str, Any], value: Any) -> None:
    raw["customer"] = value
    assert rejected(raw).reason is Reason.INVALID_FIELD


@pytest.mark.parametrize("value", [12345, ["a@b.co"], True])
def test_email_of_wrong_type_is_invalid(raw: dict[str, Any], value: Any) -> None:
    raw["customer"] = {"email": value}
    assert rejected(raw).reason is Reason.INVALID_FIELD


@pytest.mark.parametrize(
    "email", ["emma", "emma@", "@example.com", "emma@example", "emma johnson@example.com", "a@b@c.com"]
)
def test_malformed_email(raw: dict[str, Any], email: str) -> None:
    raw["customer"] = {"email": email}
    assert rejected(raw).reason is Reason.INVALID_FIELD


def test_email_length_bound(raw: dict[str, Any]) -> None:
    domain = "@example.com"
    raw["customer"] = {"email": "a" * (99 - len(domain)) + domain}
    assert len(event_from_dict(raw).customer.email) == 99
    raw["customer"] = {"email": "a" * (100 - len(domain)) + domain}
    assert rejected(raw).reason is Reason.INVALID_FIELD


def test_customer_optional_fields(raw: dict[str, Any]) -> None:
    raw["customer"] = {"email": "e@x.io", "external_id": 7001, "first_name": " ", "last_name": None}
    customer = event_from_dict(raw).customer
    assert (customer.external_id, customer.first_name, customer.last_name) == ("7001", None, None)


# --- money -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("41.00", Decimal("41.00")),
        (" 0.10 ", Decimal("0.10")),
        ("0", Decimal("0")),
        (12, Decimal("12")),
        (19.99, Decimal("19.99")),
        (0.1, Decimal("0.1")),
        ("999999999999999.99", Decimal("999999999999999.99")),
        ("1E+2", Decimal("1E+2")),
    ],
)
def test_money_is_decimal_never_float(raw: dict[str, Any], value: Any, expected: Decimal) -> None:
    raw["amount"] = value
    amount = event_from_dict(raw).amount
    assert isinstance(amount, Decimal)
    assert amount == expected
    if isinstance(value, str):
        assert str(amount) == str(expected), "the text's scale is kept (41.00 stays 41.00)"


def test_json_float_money_has_no_binary_error() -> None:
    # orjson hands a JSON number to the parser as a float; 0.1 must not become 0.1000000000000000055...
    event = event_from_dict(
        orjson.loads(
            b'{"event_id":"e","type":"refund.issued","occurred_at":"2025-03-03T10:15:00Z",'
            b'"customer":{"email":"a@b.co"},"amount":0.1}'
        )
    )
    assert event.amount == Decimal("0.1")
    assert event.amount + event.amount + event.amount == Decimal("0.3")


@pytest.mark.parametrize(
    "value", ["-0.01", "abc", "", "NaN", "Infinity", "-Infinity", "1,50", True, [1], {"v": 1}, "12.50 USD"]
)
def test_invalid_money(raw: dict[str, Any], value: Any) -> None:
    raw["amount"] = value
    error = rejected(raw)
    assert error.reason is Reason.INVALID_FIELD
    assert "amount" in error.detail


@pytest.mark.parametrize("value", ["1e999999999", "1000000000000000", "1e15"])
def test_absurd_money_is_rejected_before_it_can_overflow_a_sum(raw: dict[str, Any], value: str) -> None:
    # Regression: 1e999999999 parsed, then decimal.Overflow escaped from the reducer's addition.
    raw["amount"] = value
    assert rejected(raw).reason is Reason.INVALID_FIELD


def test_parse_money_absent_is_none() -> None:
    assert parse_money(None, "amount") is None


# --- items -----------------------------------------------------------------------------------


def test_items_absent_is_empty(raw: dict[str, Any]) -> None:
    del raw["items"]
    assert event_from_dict(raw).items == ()


def test_item_quantity_defaults_to_one(raw: dict[str, Any]) -> None:
    raw["items"] = [{"sku": "TEE-BLK-M"}]
    (item,) = event_from_dict(raw).items
    assert item.quantity == 1
    assert item.value is None


@pytest.mark.parametrize("value", [{"sku": "x"}, "TEE-BLK-M", None])
def test_items_must_be_a_list_of_objects(raw: dict[str, Any], value: Any) -> None:
    raw["items"] = value if isinstance(value, dict) else [value]
    error = rejected(raw)
    assert error.reason is Reason.INVALID_FIELD
    assert "items" in error.detail


@pytest.mark.parametrize("quantity", [0, -1, 1.5, 2.0, True, "2", None])
def test_item_quantity_must_be_a_positive_integer(raw: dict[str, Any], quantity: Any) -> None:
    raw["items"][1]["quantity"] = quantity
    error = rejected(raw)
    assert error.reason is Reason.INVALID_FIELD
    assert "items[1].quantity" in error.detail


def test_item_value_is_money(raw: dict[str, Any]) -> None:
    raw["items"][0]["value"] = "-1.00"
    error = rejected(raw)
    assert error.reason is Reason.INVALID_FIELD
    assert "items[0].value" in error.detail


# --- unknown fields, round trip ----------------------------------------------------------------


def test_unknown_fields_are_ignored(raw: dict[str, Any]) -> None:
    expected = event_from_dict(copy.deepcopy(raw))
    raw["x_loop_shop"] = "acme.myshopify.com"
    raw["refund"] = {"nested": [1, 2]}
    raw["customer"]["phone"] = "+15550100"
    raw["items"][0]["barcode"] = "0123456789"
    assert event_from_dict(raw) == expected


@pytest.mark.parametrize("name", fixture_names())
def test_fixture_events_round_trip_through_the_wire_form(name: str) -> None:
    for event in load_fixture(name):
        wire = orjson.loads(orjson.dumps(event_to_dict(event)))
        assert event_from_dict(wire) == event


def test_wire_form_leaves_absent_fields_out_and_writes_money_as_text(raw: dict[str, Any]) -> None:
    raw["type"] = "refund.issued"
    for name in ("items", "status_raw", "outcome", "order_ref"):
        del raw[name]
    raw["customer"] = {"email": "emma@example.com"}
    out = event_to_dict(event_from_dict(raw))
    assert out == {
        "event_id": "shopify:evt:5c1f0e2a-requested",
        "tenant": "default",
        "source": "shopify",
        "type": "refund.issued",
        "occurred_at": "2025-03-03T10:15:00Z",
        "customer": {"email": "emma@example.com"},
        "return_id": "1001",
        "amount": "41.00",
        "currency": "USD",
    }


def test_wire_form_of_items(raw: dict[str, Any]) -> None:
    out = event_to_dict(event_from_dict(raw))
    assert out["items"][1] == {
        "sku": "SOCK-WHT-OS",
        "product_name": "Crew Socks",
        "variant_name": "White / One size",
        "quantity": 2,
        "value": "6.50",
        "reason": "Changed my mind",
        "reason_parent": "Other",
        "outcome": "refund",
    }


@settings(max_examples=60, deadline=None)
@given(customer_streams())
def test_generated_events_round_trip(events: list[ReturnEvent]) -> None:
    for event in events:
        assert event_from_dict(orjson.loads(orjson.dumps(event_to_dict(event)))) == event


def test_rejection_carries_reason_and_detail() -> None:
    error = RejectedInput(Reason.MISSING_FIELD, "event_id is required")
    assert error.reason is Reason.MISSING_FIELD
    assert error.detail == "event_id is required"
    assert str(error) == "missing_field: event_id is required"
    assert isinstance(error, ValueError)


# --- what Klaviyo would refuse for good (issue 10) -------------------------------------------


@pytest.mark.parametrize(
    "email",
    [
        "jösé@exämple.com",  # the reported one: non-ASCII local part and IDN domain
        "jösé@example.com",  # non-ASCII local part alone
        "jose@exämple.com",  # IDN domain not in its xn-- form
        "emma@例え.jp",
        "emma@example.com.",  # a trailing dot: no such domain label
        "emma@-example.com",
        "emma@exa_mple.com",
        'em"ma@example.com',
        "em,ma@example.com",
        "emma\x00@example.com",
    ],
)
def test_email_klaviyo_does_not_accept_is_refused(raw: dict[str, Any], email: str) -> None:
    raw["customer"] = {"email": email}
    error = rejected(raw)
    assert error.reason is Reason.INVALID_FIELD
    assert "customer.email" in error.detail


@pytest.mark.parametrize(
    ("email", "normalised"),
    [
        ("Emma.Johnson+returns@Example.COM", "emma.johnson+returns@example.com"),
        ("emma@mail.shop.example.co.uk", "emma@mail.shop.example.co.uk"),
        ("o'brien@example.ie", "o'brien@example.ie"),
        ("emma@xn--exmple-cua.com", "emma@xn--exmple-cua.com"),  # exämple.com, as Klaviyo takes it
        ("first_last-1@sub-domain.example.io", "first_last-1@sub-domain.example.io"),
        ("  A@B.CO ", "a@b.co"),
    ],
)
def test_valid_emails_stay_accepted_and_keys_unchanged(
    raw: dict[str, Any], email: str, normalised: str
) -> None:
    raw["customer"] = {"email": email}
    event = event_from_dict(raw)
    assert event.customer.email == normalised
    assert event.customer_key == f"default/{normalised}"


def test_non_ascii_email_says_why(raw: dict[str, Any]) -> None:
    raw["customer"] = {"email": "jösé@exämple.com"}
    assert "non-ASCII" in rejected(raw).detail


NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("occurred_at", "reason"),
    [
        ("9999-12-31T00:00:00Z", Reason.FUTURE_TIME),  # the reported one
        ("2026-06-01T13:00:01Z", Reason.FUTURE_TIME),  # one second over the default hour
        ("2027-06-02T12:00:00Z", Reason.FUTURE_TIME),
        ("1999-12-31T23:59:59Z", Reason.TIME_OUT_OF_RANGE),
        ("0001-01-02T00:00:00Z", Reason.TIME_OUT_OF_RANGE),
    ],
)
def test_time_klaviyo_or_the_skew_refuses(raw: dict[str, Any], occurred_at: str, reason: Reason) -> None:
    raw["occurred_at"] = occurred_at
    event = event_from_dict(raw)  # without `now` only the object itself is judged
    with pytest.raises(RejectedInput) as info:
        check_time(event, now=NOW)
    assert info.value.reason is reason
    with pytest.raises(RejectedInput) as again:
        check_time(event_from_dict(raw), now=NOW)
    assert again.value.reason is reason and again.value.detail == info.value.detail
    assert "occurred_at" in info.value.detail


@pytest.mark.parametrize(
    "occurred_at", ["2000-01-01T00:00:00Z", "2026-06-01T12:00:00Z", "2026-06-01T13:00:00Z"]
)
def test_times_within_the_bounds_pass(raw: dict[str, Any], occurred_at: str) -> None:
    raw["occurred_at"] = occurred_at
    event = check_time(event_from_dict(raw), now=NOW)
    assert check_time(event, now=NOW) is event


def test_the_skew_is_a_parameter_and_never_beyond_a_klaviyo_year(raw: dict[str, Any]) -> None:
    raw["occurred_at"] = "2026-06-03T12:00:00Z"  # two days ahead
    with pytest.raises(RejectedInput):
        check_time(event_from_dict(raw), now=NOW)
    two_days = timedelta(days=2)
    assert check_time(event_from_dict(raw), now=NOW, max_future_skew=two_days).occurred_at == NOW + two_days
    raw["occurred_at"] = "2027-06-02T12:00:00Z"  # past Klaviyo's year, even with a larger skew
    with pytest.raises(RejectedInput) as info:
        check_time(event_from_dict(raw), now=NOW, max_future_skew=timedelta(days=1000))
    assert info.value.reason is Reason.FUTURE_TIME
    assert timedelta(hours=1) == DEFAULT_MAX_FUTURE_SKEW


@given(offset=st.integers(min_value=-10**9, max_value=10**9), skew=st.integers(min_value=0, max_value=10**7))
@settings(max_examples=200)
def test_check_time_is_a_pure_function_of_event_and_now(offset: int, skew: int) -> None:
    line = (FIXTURES / "refund_single_return.jsonl").read_text().splitlines()[0]
    event = event_from_dict(orjson.loads(line))
    now = event.occurred_at + timedelta(seconds=offset)
    window = timedelta(seconds=skew)
    outcomes = []
    for _ in range(2):  # the same inputs always decide the same
        try:
            check_time(event, now=now, max_future_skew=window)
            outcomes.append(None)
        except RejectedInput as exc:
            outcomes.append(exc.reason)
    assert outcomes[0] == outcomes[1]
    assert (outcomes[0] is None) == (event.occurred_at <= now + window)


@pytest.mark.parametrize("quantity", [1_000_001, 10**30])
def test_absurd_quantity_is_refused(raw: dict[str, Any], quantity: int) -> None:
    raw["items"][0]["quantity"] = quantity
    assert rejected(raw).reason is Reason.INVALID_FIELD
    raw["items"][0]["quantity"] = 1_000_000
    assert event_from_dict(raw).items[0].quantity == 1_000_000


# --- order.placed ------------------------------------------------------------------------------------

ORDER: dict[str, Any] = {
    "event_id": "api:order:2001", "type": "order.placed", "occurred_at": "2025-02-02T11:00:00Z",
    "customer": {"email": "Olivia.Martin@Example.com"}, "order_ref": "#2001", "amount": "84.00",
    "currency": "USD", "item_count": 3,
}


def test_an_order_parses_and_round_trips() -> None:
    placed = event_from_dict(ORDER)
    assert placed.type is EventType.ORDER_PLACED and not placed.type.is_status
    assert (placed.order_ref, placed.amount, placed.currency, placed.item_count) == (
        "#2001", Decimal("84.00"), "USD", 3)
    assert placed.return_id is None and placed.customer_key == "default/olivia.martin@example.com"
    assert event_from_dict(event_to_dict(placed)) == placed
    assert event_to_dict(placed)["item_count"] == 3
    assert event_from_dict({**ORDER, "item_count": 0, "amount": "0"}).item_count == 0  # a free sample


def test_an_order_names_every_missing_field_at_once() -> None:
    needed = ("order_ref", "amount", "currency", "item_count")
    bare = {key: value for key, value in ORDER.items() if key not in needed}
    error = rejected(bare)
    assert error.reason is Reason.MISSING_FIELD
    assert error.detail.startswith("order_ref, amount, currency, item_count required for order.placed")
    assert rejected({**ORDER, "item_count": None}).detail.startswith("item_count required")


@pytest.mark.parametrize("count", [-1, 1.5, "3", True, 1_000_001])
def test_item_count_must_be_a_whole_number_of_units(count: Any) -> None:
    error = rejected({**ORDER, "item_count": count})
    assert error.reason is Reason.INVALID_FIELD
    assert error.detail == "item_count must be an integer from 0 to 1000000"
