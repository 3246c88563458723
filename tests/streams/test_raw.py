"""The raw webhook envelope on `returns.raw`, and its key."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.errors import Reason, RejectedInput
from streams.raw import SIGNATURE_HEADERS, RawWebhook, decode_raw, encode_raw, raw_key
from tests.streams.adapter_support import fixture_json

AT = datetime(2024, 5, 2, 15, 4, 5, 123456, tzinfo=UTC)


def test_headers_are_lower_cased_and_secrets_never_kept() -> None:
    raw = RawWebhook(
        "redo",
        AT,
        {
            "Authorization": "Bearer s3cret",
            "X-Loop-Signature": "abc",
            "X-ReturnSync-Tenant": "eu",
            "Content-Type": "x",
        },
        b"{}",
    )
    assert dict(raw.headers) == {"x-returnsync-tenant": "eu", "content-type": "x"}
    with pytest.raises(TypeError):
        raw.headers["authorization"] = "again"  # type: ignore[index]


def test_signature_headers_cover_every_platform_scheme() -> None:
    assert {"x-loop-signature", "x-shopify-hmac-sha256", "authorization", "as-signature-hmac-sha256",
            "am-webhook-signature", "x-swap-signature"} <= SIGNATURE_HEADERS  # fmt: skip


def test_received_strips_a_configured_header_and_takes_pairs() -> None:
    pairs = [("X-Swap-Hmac", "sig"), ("X-Swap-Jwt", "a.b.c"), ("Accept", "*/*"), ("accept", "json")]
    raw = RawWebhook.received("swap", pairs, b"{}", AT, strip=["x-swap-hmac", "X-Swap-JWT"])
    assert dict(raw.headers) == {"accept": "json"}  # repeated headers: the last one wins


def test_received_at_must_be_aware_and_is_kept_in_utc() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        RawWebhook("loop", datetime(2024, 1, 1), {}, b"")
    local = datetime(2024, 1, 1, 9, 0, tzinfo=timezone(timedelta(hours=9)))
    assert RawWebhook("loop", local, {}, b"").received_at == datetime(2024, 1, 1, 0, 0, tzinfo=UTC)


def test_utf8_body_is_stored_as_text_for_any_kafka_tool_to_read() -> None:
    raw = RawWebhook("loop", AT, {"x-shopify-topic": "t"}, '{"name": "Zoë \\/ #1"}'.encode())
    envelope = orjson.loads(encode_raw(raw))
    assert envelope == {
        "source": "loop",
        "received_at": "2024-05-02T15:04:05.123456Z",
        "headers": {"x-shopify-topic": "t"},
        "body": '{"name": "Zoë \\/ #1"}',
        "body_encoding": "utf-8",
    }
    assert decode_raw(encode_raw(raw)) == raw


def test_binary_body_is_stored_as_base64() -> None:
    body = b"\xff\xfe\x00gzip?"
    envelope = orjson.loads(encode_raw(RawWebhook("swap", AT, {}, body)))
    assert (envelope["body"], envelope["body_encoding"]) == (base64.b64encode(body).decode(), "base64")
    assert decode_raw(encode_raw(RawWebhook("swap", AT, {}, body))).body == body


def test_envelope_without_encoding_is_utf8_and_extra_fields_are_ignored() -> None:
    data = json.dumps(
        {"source": "redo", "received_at": "2024-05-02T15:04:05Z", "body": "{}", "v": 2}
    ).encode()
    assert decode_raw(data) == RawWebhook("redo", datetime(2024, 5, 2, 15, 4, 5, tzinfo=UTC), {}, b"{}")


def test_decoding_strips_signature_headers_a_producer_left_in() -> None:
    data = json.dumps(
        {
            "source": "redo",
            "received_at": "2024-05-02T15:04:05Z",
            "headers": {"Authorization": "Bearer x"},
            "body": "",
        }
    ).encode()
    assert dict(decode_raw(data).headers) == {}


GOOD: dict[str, Any] = {"source": "loop", "received_at": "2024-05-02T15:04:05Z", "headers": {}, "body": "{}"}


@pytest.mark.parametrize(
    "data",
    [
        b"not json",
        b"[]",
        json.dumps({**GOOD, "source": ""}).encode(),
        json.dumps({**GOOD, "source": 7}).encode(),
        json.dumps({**GOOD, "received_at": None}).encode(),
        json.dumps({**GOOD, "received_at": "2024-05-02T15:04:05"}).encode(),  # naive
        json.dumps({**GOOD, "received_at": "0001-01-01T00:00:00+01:00"}).encode(),
        json.dumps({**GOOD, "headers": ["a"]}).encode(),
        json.dumps({**GOOD, "headers": {"a": 1}}).encode(),
        json.dumps({**GOOD, "body": None}).encode(),
        json.dumps({**GOOD, "body": "%%%", "body_encoding": "base64"}).encode(),
        json.dumps({**GOOD, "body_encoding": "gzip"}).encode(),
        b'{"source": "loop", "received_at": "2024-05-02T15:04:05Z", "body": "\\ud800"}',
    ],
)
def test_bad_envelopes_are_rejected_with_bad_envelope(data: bytes) -> None:
    with pytest.raises(RejectedInput) as caught:
        decode_raw(data)
    assert caught.value.reason is Reason.BAD_ENVELOPE


@given(
    source=st.sampled_from(["loop", "redo", "swap", "shopify", "aftership"]),
    headers=st.dictionaries(st.text(min_size=1, max_size=20), st.text(max_size=40), max_size=5),
    body=st.binary(max_size=500) | st.text(max_size=200).map(str.encode),
    micros=st.integers(min_value=0, max_value=10**15),
)
def test_any_webhook_survives_the_topic_unchanged(
    source: str, headers: dict[str, str], body: bytes, micros: int
) -> None:
    raw = RawWebhook(source, datetime(2000, 1, 1, tzinfo=UTC) + timedelta(microseconds=micros), headers, body)
    assert decode_raw(encode_raw(raw)) == raw


@pytest.mark.parametrize(
    ("source", "fixture", "key"),
    [
        ("loop", "return_closed", "loop:6042537"),
        ("loop", "label_updated", "loop:6042537"),
        ("loop", "restock_requested", "loop:6042537"),
        ("loop", "giftcard_requested", "loop:6042537"),
        ("loop", "label_request_issued", "loop:6042537"),
        ("loop", "return_processing_failed", "loop:6042537"),
        ("loop", "shipment_processed", None),
        ("redo", "return_updated", "redo:664f65d4c5a4ca3eff4b4e43"),
        ("swap", "return_processed", "swap:r_8f2c"),
        ("shopify", "returns_approve", "shopify:3547267221"),
        ("shopify", "refunds_create", "shopify:3547267221"),
        ("shopify", "orders_create", None),
        ("aftership", "return_resolved", "aftership:b3eedf69b7c0410d8975d4350c007705"),
    ],
)
def test_raw_key_names_the_return(source: str, fixture: str, key: str | None) -> None:
    assert raw_key(source, fixture_json(source, fixture)) == key


@pytest.mark.parametrize(
    ("source", "body"),
    [
        ("loop", None),
        ("loop", [1]),
        ("loop", {"topic": "giftcard", "id": 55012, "return_id": None}),  # never the gift card's own id
        ("loop", {"topic": "return", "id": True}),
        ("loop", {"topic": "return", "id": "x" * 500}),
        ("redo", {"return": "664f"}),
        ("swap", {"return": {"return_id": 1.5}}),
        ("shopify", {"id": 1, "admin_graphql_api_id": 7}),
        ("aftership", {"data": {"id": "  "}}),
        ("narvar", {"id": "1"}),
    ],
)
def test_raw_key_is_none_when_the_body_names_no_usable_return(source: str, body: Any) -> None:
    assert raw_key(source, body) is None
