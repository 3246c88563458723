"""The sandbox's OAS-subset validator and Klaviyo's documented field rules, without HTTP."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from klaviyo_sandbox import rules
from klaviyo_sandbox.validation import catalog, parse_date_time, validate

NOW = datetime(2026, 11, 1, tzinfo=UTC)
NULLABLE_TEXT = {"type": "string", "nullable": True}
UNSET = {"nullable": True, "oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}
RESOURCE = {
    "type": "object",
    "required": ["type", "attributes"],
    "properties": {
        "type": {"type": "string", "enum": ["profile"]},
        "attributes": {
            "type": "object",
            "properties": {"email": NULLABLE_TEXT, "properties": {"type": "object"}},
        },
    },
}


def pointers(value: Any, schema: dict[str, Any]) -> list[str]:
    return [violation.pointer for violation in validate(value, schema)]


def test_catalog_has_every_endpoint_with_oas_rate_limits() -> None:
    ops = catalog()
    assert {op: (spec.burst_per_second, spec.steady_per_minute) for op, spec in ops.items()} == {
        "create_or_update_profile": (75, 750),
        "create_event": (350, 3500),
        "get_profiles": (75, 750),
        "get_data_sources": (3, 60),
        "create_data_source": (3, 60),
        "get_data_source": (3, 60),
        "delete_data_source": (3, 60),
        "bulk_create_data_source_records": (3, 15),
        "create_data_source_record": (75, 750),
        "get_object_types": (3, 60),
        "get_records_for_object_type": (3, 60),
        "bulk_import_profiles": (10, 150),
        "get_bulk_import_profiles_job": (10, 150),
        "get_errors_for_bulk_import_profiles_job": (10, 150),
        "bulk_create_events": (10, 150),
    }
    assert ops["create_event"].request_schema is not None and ops["get_profiles"].request_schema is None


def test_a_valid_resource_passes() -> None:
    assert (
        validate({"type": "profile", "attributes": {"email": None, "properties": {"any": [1]}}}, RESOURCE)
        == []
    )


@pytest.mark.parametrize(
    ("value", "pointer"),
    [
        ({"attributes": {}}, "/type"),  # required
        ({"type": "event", "attributes": {}}, "/type"),  # enum
        ({"type": "profile", "attributes": {"email": 5}}, "/attributes/email"),  # type
        ({"type": "profile", "attributes": {"phone": "1"}}, "/attributes/phone"),  # closed object
        ({"type": "profile", "attributes": {"properties": None}}, "/attributes/properties"),  # not nullable
        ({"type": "profile", "attributes": {"properties": []}}, "/attributes/properties"),
    ],
)
def test_each_keyword_refuses_with_a_pointer(value: Any, pointer: str) -> None:
    assert pointers(value, RESOURCE) == [pointer]


def test_unknown_field_names_the_resource() -> None:
    [violation] = validate({"type": "profile", "attributes": {"subscriptions": {}}}, RESOURCE)
    assert violation.detail == "'subscriptions' is not a valid field for the resource 'profile'."


@pytest.mark.parametrize(
    ("value", "ok"), [("k", True), (["a", "b"], True), (None, True), ([1], False), (3, False)]
)
def test_one_of_with_nullable(value: Any, ok: bool) -> None:
    assert (validate(value, UNSET) == []) is ok


@pytest.mark.parametrize(
    ("schema", "value", "ok"),
    [
        ({"type": "number"}, True, False),  # JSON keeps booleans apart from numbers
        ({"type": "integer"}, 2.0, True),
        ({"type": "integer"}, 2.5, False),
        ({"type": "string", "maxLength": 3}, "abcd", False),
        ({"type": "string", "minLength": 1}, "", False),
        ({"type": "array", "maxItems": 1}, [1, 2], False),
        ({"anyOf": [{"type": "string"}, {"type": "number"}]}, 1, True),
        ({"anyOf": [{"type": "string"}, {"type": "number"}]}, {}, False),
        ({"type": "object", "additionalProperties": {"type": "string"}}, {"a": 1}, False),
        ({"type": "object"}, {"free": {"form": 1}}, True),
    ],
)
def test_subset_keywords(schema: dict[str, Any], value: Any, ok: bool) -> None:
    assert (validate(value, schema) == []) is ok


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("2026-05-01T10:00:00+00:00", True),
        ("2026-05-01T10:00:00.123Z", True),
        ("2026-05-01T10:00:00", False),  # RFC 3339 needs an offset
        ("2026-05-01", False),
        ("2026-13-01T10:00:00Z", False),
    ],
)
def test_date_time(text: str, ok: bool) -> None:
    assert (parse_date_time(text) is not None) is ok


@pytest.mark.parametrize(
    ("email", "ok"),
    [
        ("ana@shop.io", True),
        ("ana+returns@shop.co.uk", True),
        ("ana@shop", False),
        ("ana shop@shop.io", False),
        ("a@@shop.io", False),
        ("a" * 95 + "@x.io", False),  # 100 characters: Klaviyo wants fewer
        ("a" * 94 + "@x.io", True),
    ],
)
def test_email(email: str, ok: bool) -> None:
    assert (rules.email_problem(email) is None) is ok


def test_profile_needs_an_identifier_and_e164_phone() -> None:
    assert [v.pointer for v in rules.profile_identity({"first_name": "A"}, False, "/p")] == ["/p"]
    assert rules.profile_identity({"first_name": "A"}, True, "/p") == []
    assert rules.profile_identity({"anonymous_id": "x"}, False, "/p", event_profile=True) == []
    assert [v.pointer for v in rules.profile_identity({"phone_number": "0612"}, False, "/p")] == [
        "/p/phone_number"
    ]


def event(**attributes: Any) -> dict[str, Any]:
    return {"metric": {"data": {"attributes": {"name": "Return Requested"}}}, "properties": {}, **attributes}


@pytest.mark.parametrize(
    ("attributes", "ok"),
    [
        (event(time="2000-01-01T00:00:00+00:00"), True),
        (event(time="1999-12-31T23:59:59+00:00"), False),
        (event(time="2027-10-31T00:00:00+00:00"), True),
        (event(time="2027-11-02T00:00:00+00:00"), False),
        (event(unique_id="u" * 255), True),
        (event(unique_id="u" * 256), False),
        (event(properties={str(i): i for i in range(400)}), True),
        (event(properties={str(i): i for i in range(401)}), False),
        (event(properties={"a": [0] * 4000}), True),
        (event(properties={"a": [0] * 4001}), False),
    ],
)
def test_event_rules(attributes: dict[str, Any], ok: bool) -> None:
    assert (rules.event_attributes(attributes, "", NOW) == []) is ok


def test_strings_over_100kb_are_refused_wherever_they_are() -> None:
    assert [v.pointer for v in rules.long_strings({"a": [{"b": "x" * 100_001}], "c": "x" * 100_000})] == [
        "/a/0/b"
    ]


def test_consent_fields_are_found_outside_custom_properties_only() -> None:
    body = {
        "data": {
            "attributes": {
                "subscriptions": {},
                "properties": {"consent": "free text", "$consent": ["email"]},
                "meta": {"patch_properties": {"append": {"consent": 1}}},
            }
        }
    }
    assert list(rules.consent_fields(body)) == [
        "/data/attributes/subscriptions",
        "/data/attributes/properties/$consent",
    ]
