"""Webhook authentication per platform, over the raw body bytes."""

from __future__ import annotations

import base64
import hashlib
import hmac

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.errors import Reason, RejectedInput
from streams.signatures import sign, verify
from tests.streams.adapter_support import fixture_body

SECRET = "whsec_7f3c1a9e"
SOURCES = ["loop", "shopify", "aftership", "redo", "swap"]
FIXTURE = {
    "loop": "return_closed",
    "shopify": "returns_approve",
    "aftership": "return_resolved",
    "redo": "return_complete",
    "swap": "return_processed",
}
HMAC_SOURCES = ["loop", "shopify", "aftership", "swap"]  # Redo's bearer secret does not cover the body


def _body(source: str) -> bytes:
    return fixture_body(source, FIXTURE[source])


def _b64(body: bytes, secret: str = SECRET) -> str:
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


@pytest.mark.parametrize("source", SOURCES)
def test_signed_request_verifies(source: str) -> None:
    body = _body(source)
    assert verify(source, sign(source, body, SECRET), body, SECRET)


@pytest.mark.parametrize("source", HMAC_SOURCES)
def test_tampered_body_fails(source: str) -> None:
    body = _body(source)
    headers = sign(source, body, SECRET)
    assert not verify(source, headers, body.replace(b"USD", b"EUR").replace(b"GBP", b"EUR") + b" ", SECRET)


@pytest.mark.parametrize("source", SOURCES)
def test_wrong_secret_fails(source: str) -> None:
    body = _body(source)
    assert not verify(source, sign(source, body, "someone-else"), body, SECRET)


@pytest.mark.parametrize("source", SOURCES)
def test_missing_header_fails(source: str) -> None:
    assert not verify(source, {"Content-Type": "application/json"}, _body(source), SECRET)


@pytest.mark.parametrize("source", SOURCES)
def test_empty_secret_never_verifies(source: str) -> None:
    body = _body(source)
    assert not verify(source, sign(source, body, ""), body, "")


@pytest.mark.parametrize("source", SOURCES)
def test_header_names_are_case_insensitive(source: str) -> None:
    body = _body(source)
    headers = {name.upper(): value for name, value in sign(source, body, SECRET).items()}
    assert verify(source, headers, body, SECRET)


@pytest.mark.parametrize("source", HMAC_SOURCES)
def test_re_serialised_json_does_not_verify(source: str) -> None:
    # The HTTP layer must hand over the bytes as read, never parsed-and-dumped JSON.
    body = _body(source)
    headers = sign(source, body, SECRET)
    assert not verify(source, headers, orjson.dumps(orjson.loads(body)), SECRET)


def test_loop_signature_is_base64_hmac_sha256_of_the_raw_body() -> None:
    body = b'{"topic":"return","status_page_url":"https:\\/\\/example.loopreturns.com\\/#\\/return\\/1"}'
    assert verify("loop", {"X-Loop-Signature": _b64(body)}, body, SECRET)


def test_shopify_signature_is_base64_hmac_sha256_of_the_raw_body() -> None:
    body = _body("shopify")
    assert sign("shopify", body, SECRET) == {"X-Shopify-Hmac-Sha256": _b64(body)}


def test_aftership_accepts_the_legacy_header_of_older_organisations() -> None:
    body = _body("aftership")
    assert verify("aftership", {"am-webhook-signature": f"hmac-sha256={_b64(body)}"}, body, SECRET)
    assert not verify("aftership", {"am-webhook-signature": _b64(body)}, body, SECRET)  # prefix required
    # When both are present the current header decides.
    both = {"as-signature-hmac-sha256": "forged", "am-webhook-signature": f"hmac-sha256={_b64(body)}"}
    assert not verify("aftership", both, body, SECRET)


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        (f"Bearer {SECRET}", True),
        (f"bearer {SECRET}", True),
        (f"  Bearer {SECRET}  ", True),
        (f"Basic {SECRET}", False),
        (SECRET, False),
        (f"Bearer {SECRET}x", False),
        ("Bearer ", False),
    ],
)
def test_redo_bearer_secret(value: str, ok: bool) -> None:
    assert verify("redo", {"Authorization": value}, b"{}", SECRET) is ok


def test_swap_accepts_hex_or_base64_in_the_configured_header() -> None:
    body = _body("swap")
    digest = hmac.new(SECRET.encode(), body, hashlib.sha256).digest()
    for value in (
        digest.hex(),
        digest.hex().upper(),
        base64.b64encode(digest).decode(),
        f"sha256={digest.hex()}",
    ):
        assert verify("swap", {"X-Swap-Signature": value}, body, SECRET)
        assert verify("swap", {"X-Webhook-Hmac": value}, body, SECRET, swap_header="X-Webhook-Hmac")
        assert not verify("swap", {"X-Swap-Signature": value}, body, SECRET, swap_header="X-Webhook-Hmac")
    assert sign("swap", body, SECRET, swap_header="X-Webhook-Hmac") == {"X-Webhook-Hmac": digest.hex()}


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("value", ["ünïcødé", "\udcff\ud800", "", "a" * 10_000])
def test_hostile_header_values_are_a_mismatch_not_an_exception(source: str, value: str) -> None:
    headers = {name: value for name in sign(source, b"{}", SECRET)}
    assert not verify(source, headers, b"{}", SECRET)


def test_unknown_source_has_no_scheme() -> None:
    for call in (lambda: verify("narvar", {}, b"", SECRET), lambda: sign("narvar", b"", SECRET)):
        with pytest.raises(RejectedInput) as caught:
            call()
        assert caught.value.reason is Reason.UNKNOWN_SOURCE


@given(
    source=st.sampled_from(SOURCES),
    body=st.binary(max_size=2000),
    secret=st.text(min_size=1, max_size=64).filter(lambda s: s.strip() == s and " " not in s),
)
def test_sign_then_verify_for_any_body_and_secret(source: str, body: bytes, secret: str) -> None:
    assert verify(source, sign(source, body, secret), body, secret)


@given(source=st.sampled_from(HMAC_SOURCES), body=st.binary(min_size=1, max_size=500), data=st.data())
def test_flipping_any_bit_of_the_body_fails(source: str, body: bytes, data: st.DataObject) -> None:
    index = data.draw(st.integers(min_value=0, max_value=len(body) - 1))
    bit = data.draw(st.integers(min_value=0, max_value=7))
    tampered = body[:index] + bytes([body[index] ^ (1 << bit)]) + body[index + 1 :]
    assert not verify(source, sign(source, body, SECRET), tampered, SECRET)
