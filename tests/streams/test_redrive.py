"""Dead letters read back, and where each one re-drives to (streams/deadletter.py, streams/redrive.py)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.codec import encode_event
from streams.deadletter import DeadLetter, dead_letter, hide_emails, read_dead_letter
from streams.demo import demo_events
from streams.errors import Reason, Stage
from streams.raw import RawWebhook, decode_raw, encode_raw
from streams.redrive import Redrive, Refused, Target, Verify, redrive
from streams.signatures import proof, sign, verify_proof

AT = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
SECRET = "whsec-1"
BODY = b'{"id": "r_1", "customer": {"email": "jane@example.com"}}'
SOURCES = ("loop", "redo", "swap", "shopify", "aftership")


def letter(stage: Stage, reason: Reason, original: bytes | object, **origin: object) -> DeadLetter:
    return read_dead_letter(dead_letter(stage=stage, reason=reason, error="e", original=original, at=AT,
                                        origin=dict(origin) or None))


def verified(secret: str | None) -> Verify:
    def verify(source: str, kept: Mapping[str, str], body: bytes) -> bool | None:
        return None if secret is None else verify_proof(source, kept, body, secret)

    return verify


def kept_webhook(source: str, body: bytes = BODY, secret: str = SECRET) -> bytes:
    headers = {"Content-Type": "application/json", **sign(source, body, secret)}
    envelope = orjson.loads(encode_raw(RawWebhook.received(source, headers, body, AT)))
    return orjson.dumps({**envelope, "proof": proof(source, headers)})


# -- reading dead letters back -------------------------------------------------------------------

@given(st.binary(max_size=200))
def test_any_original_bytes_read_back_byte_for_byte(original: bytes) -> None:
    back = letter(Stage.NORMALIZE, Reason.NOT_JSON, original, topic="returns.raw", partition=1, offset=7)
    assert back.original == original
    assert (back.stage, back.reason, back.at) == ("normalize", "not_json", AT)
    assert back.origin == {"topic": "returns.raw", "partition": 1, "offset": 7}


def test_a_structured_original_reads_back_as_its_json() -> None:
    back = letter(Stage.SYNC, Reason.KLAVIYO_REJECTED, {"request": {"a": 1}})
    assert orjson.loads(back.original) == {"request": {"a": 1}}


@pytest.mark.parametrize("data", [b"nope", b"[1]", b'{"stage": "sync"}'])
def test_a_record_that_is_no_dead_letter_is_refused(data: bytes) -> None:
    with pytest.raises(ValueError):
        read_dead_letter(data)


def test_emails_in_error_texts_are_hidden() -> None:
    text = "klaviyo 400: email 'Jane.Doe+x@Example.com' is invalid; other@shop.co too"
    assert hide_emails(text) == "klaviyo 400: email '<email>' is invalid; <email> too"
    assert hide_emails("no address here") == "no address here"


# -- proof: what a refused webhook keeps ----------------------------------------------------------

@pytest.mark.parametrize("source", SOURCES)
def test_a_kept_proof_verifies_with_the_right_secret_only(source: str) -> None:
    headers = sign(source, BODY, SECRET)
    kept = proof(source, headers)
    assert verify_proof(source, kept, BODY, SECRET)
    assert not verify_proof(source, kept, BODY, "another")
    assert not verify_proof(source, {}, BODY, SECRET)
    if source != "redo":  # Redo's bearer token does not cover the body (reference §2.2)
        assert not verify_proof(source, kept, BODY + b" ", SECRET)


def test_redos_bearer_secret_is_kept_only_as_a_digest() -> None:
    kept = proof("redo", {"Authorization": f"Bearer {SECRET}"})
    assert SECRET not in orjson.dumps(kept).decode()
    assert kept["authorization"].startswith("sha256:")
    assert proof("redo", {"Authorization": f"Basic {SECRET}"}) == {}


# -- where each stage re-drives to -----------------------------------------------------------------

@pytest.mark.parametrize("source", SOURCES)
def test_a_kept_webhook_goes_to_raw_once_its_secret_verifies_it(source: str) -> None:
    kept = letter(Stage.WEBHOOK, Reason.NO_SECRET, kept_webhook(source))
    planned = redrive(kept, None, verified(SECRET))
    assert isinstance(planned, Redrive) and planned.target is Target.RAW
    raw = decode_raw(planned.value)
    assert (raw.source, raw.body) == (source, BODY)
    assert b"proof" not in planned.value and SECRET.encode() not in planned.value


def test_a_kept_webhook_stays_out_without_the_secret_or_with_another_one() -> None:
    kept = letter(Stage.WEBHOOK, Reason.BAD_SIGNATURE, kept_webhook("loop", secret="forged"))
    assert redrive(kept, None, verified(None)) == Refused("LOOP_WEBHOOK_SECRET is still not configured")
    assert redrive(kept, None, verified(SECRET)) == Refused(
        "the signature does not match LOOP_WEBHOOK_SECRET")


def test_normalize_dead_letters_go_back_to_raw_as_they_were() -> None:
    envelope = encode_raw(RawWebhook.received("loop", {}, BODY, AT))
    planned = redrive(letter(Stage.NORMALIZE, Reason.PROCESSING_ERROR, envelope), b"k", verified(None))
    assert isinstance(planned, Redrive) and (planned.target, planned.value) == (Target.RAW, envelope)
    unreadable = redrive(letter(Stage.NORMALIZE, Reason.NOT_JSON, b"{"), None, verified(None))
    assert isinstance(unreadable, Refused) and "still unreadable" in unreadable.why


def test_state_dead_letters_go_back_to_events_keyed_by_customer() -> None:
    event = demo_events(1, seed=3)[0]
    value = encode_event(event)
    planned = redrive(letter(Stage.STATE, Reason.PROCESSING_ERROR, value), None, verified(None))
    assert planned == Redrive(Target.EVENTS, event.customer_key.encode(), value)
    refused = redrive(letter(Stage.STATE, Reason.MISSING_FIELD, b'{"type": "return.requested"}'), None,
                      verified(None))
    assert isinstance(refused, Refused) and "still refused" in refused.why


def test_sync_dead_letters_derive_their_customer_again() -> None:
    rejected = letter(Stage.SYNC, Reason.KLAVIYO_REJECTED, {"request": {}})
    assert redrive(rejected, b"default/jane@example.com", verified(None)) == Redrive(
        Target.CUSTOMER, customer_key="default/jane@example.com")
    nobody = redrive(letter(Stage.SYNC, Reason.KLAVIYO_IMPORT_ERROR, {}), b"", verified(None))
    assert isinstance(nobody, Refused) and "names no customer" in nobody.why
