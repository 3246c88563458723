"""What Klaviyo would refuse for good is dead-lettered by the processors, before any state
(issue 10): from Kafka (the fold) and from webhooks (normalize), dated against the record's own
time so a replay decides the same."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import orjson

from agents.worker.fold import Fold
from agents.worker.normalize import Hold, Normalizer
from streams.errors import Reason
from streams.partitioning import expected_partition
from streams.raw import encode_raw
from tests.agents.worker.test_processors import JOIN_TOPIC, PARTITIONS, Message, Outputs
from tests.streams.adapter_support import fixture_body, raw, raw_fixture

APPENDED = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def canonical(email: str = "emma@shop.example.com", occurred_at: str = "2026-06-01T11:00:00Z",
              event_id: str = "e-1") -> dict[str, object]:
    return {"event_id": event_id, "type": "return.requested", "return_id": "R-1", "occurred_at": occurred_at,
            "customer": {"email": email}, "items": [{"sku": "TEE"}]}


def record(obj: dict[str, object], appended: datetime = APPENDED, offset: int = 0) -> Message:
    email = str(obj["customer"]["email"]).strip().lower()  # type: ignore[index]
    key = f"default/{email}".encode()
    return Message("returns.events", expected_partition(key, PARTITIONS), offset, key, orjson.dumps(obj),
                   timestamp=appended.timestamp())


def fold(table: dict[bytes, bytes], outputs: Outputs, skew: timedelta = timedelta(hours=1)) -> Fold:
    return Fold(table, PARTITIONS, sync=outputs.record("sync"), rekey=outputs.record("rekey"),
                dead_letters=outputs.dead_letters, max_future_skew=skew)


async def test_fold_dead_letters_each_bad_input_with_its_reason_and_keeps_no_state() -> None:
    table: dict[bytes, bytes] = {}
    outputs = Outputs()
    processor = fold(table, outputs)
    await processor.process(record(canonical(email="jösé@exämple.com")))
    await processor.process(record(canonical(occurred_at="9999-12-31T00:00:00Z"), offset=1))
    await processor.process(record(canonical(occurred_at="1999-01-01T00:00:00Z"), offset=2))
    assert table == {} and outputs.sent["sync"] == []
    letters = outputs.dead()
    assert [(letter["stage"], letter["reason"]) for letter in letters] == [
        ("state", Reason.INVALID_FIELD.value), ("state", Reason.FUTURE_TIME.value),
        ("state", Reason.TIME_OUT_OF_RANGE.value)]
    assert "non-ASCII" in letters[0]["error"]
    assert "9999-12-31" in letters[1]["error"]


async def test_fold_dates_an_event_against_the_record_timestamp_not_its_clock() -> None:
    # An event two hours after its append time is refused; the same event appended three hours
    # later is fine. Both decisions depend only on the record, so a replay repeats them.
    event = canonical(occurred_at="2026-06-01T14:00:00Z")
    for _ in range(2):
        table: dict[bytes, bytes] = {}
        outputs = Outputs()
        await fold(table, outputs).process(record(event, APPENDED))
        assert [letter["reason"] for letter in outputs.dead()] == [Reason.FUTURE_TIME.value]
        await fold(table, outputs).process(record(event, APPENDED + timedelta(hours=3), offset=1))
        assert len(outputs.sent["sync"]) == 1 and len(table) == 1


async def test_fold_skew_is_configurable() -> None:
    table: dict[bytes, bytes] = {}
    outputs = Outputs()
    await fold(table, outputs, skew=timedelta(days=2)).process(
        record(canonical(occurred_at="2026-06-03T11:00:00Z")))
    assert outputs.dead() == [] and len(table) == 1


def normalizer(outputs: Outputs, skew: timedelta = timedelta(hours=1)) -> Normalizer:
    return Normalizer(customers={}, hold=Hold({}, per_order=5, total=50), partitions=PARTITIONS,
                      join_topic=JOIN_TOPIC, emit=outputs.record("emit"), rejoin=outputs.record("rejoin"),
                      dead_letters=outputs.dead_letters, max_future_skew=skew)


async def test_a_webhook_dated_after_it_was_received_is_dead_lettered_whole() -> None:
    webhook = raw_fixture("loop", "return_created")
    outputs = Outputs()
    early = replace(webhook, received_at=datetime(2024, 3, 1, tzinfo=UTC))  # its return is from 2024-03-02
    value = encode_raw(early)
    await normalizer(outputs).process(Message("returns.raw", 0, 7, b"loop:1", value))
    assert outputs.sent["emit"] == [], "none of its events is sent"
    [letter] = outputs.dead()
    assert (letter["stage"], letter["reason"]) == ("normalize", Reason.FUTURE_TIME.value)
    assert letter["original"] == value.decode()
    await normalizer(outputs, skew=timedelta(days=2)).process(Message("returns.raw", 0, 8, b"loop:1", value))
    assert outputs.sent["emit"], "within a larger skew it is fine"


async def test_a_webhook_with_an_email_klaviyo_refuses_is_dead_lettered() -> None:
    body = orjson.loads(fixture_body("loop", "return_created"))
    body["customer_detail"]["email"] = body["customer"] = "jösé@exämple.com"
    outputs = Outputs()
    await normalizer(outputs).process(Message("returns.raw", 0, 9, b"loop:1", encode_raw(raw("loop", body))))
    assert outputs.sent["emit"] == []
    [letter] = outputs.dead()
    assert (letter["stage"], letter["reason"]) == ("normalize", Reason.INVALID_FIELD.value)
    assert "customer.email" in letter["error"]
