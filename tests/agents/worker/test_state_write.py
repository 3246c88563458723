"""An event whose customer state or sync record cannot be written is dead-lettered with a reason,
counted, and not applied: the customer keeps the state it had (agents/worker/state_write.py)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agents import metrics
from agents.worker.fold import Fold
from agents.worker.state_write import StateWrites, size_refusal
from streams.codec import decode_state
from streams.errors import Reason
from streams.outbox import decode_sync_record
from streams.reducer import Applied, Result, apply_event
from tests.agents.worker.test_processors import PARTITIONS, Outputs, keyed
from tests.streams.strategies import event

EMAIL = "olu.adeyemi@example.com"


def failures(reason: Reason) -> float:
    labels = {"reason": reason.value}
    return metrics.REGISTRY.get_sample_value("returnsync_state_write_failures_total", labels) or 0.0


def opened(number: int, email: str = EMAIL) -> Any:
    """A return left open: kept in full in the state, so each one grows it."""
    return event("return.requested", return_id=f"R-{number}", customer=email,
                 occurred_at=f"2026-01-01T{number // 60:02d}:{number % 60:02d}:00Z",
                 event_id=f"open-{number}", items=[{"sku": f"SKU-{number}", "quantity": 1}])


def fold(table: dict[bytes, bytes], outputs: Outputs, limit: int) -> Fold:
    return Fold(table, PARTITIONS, sync=outputs.record("sync"), rekey=outputs.record("rekey"),
                dead_letters=outputs.dead_letters, max_state_bytes=limit)


# --- the size decision ---------------------------------------------------------------------------


def test_a_state_or_record_over_the_limit_is_refused_and_says_which() -> None:
    assert size_refusal(b"k", b"s" * 9, b"r" * 9, limit=10) is None
    state = size_refusal(b"k", b"s" * 10, b"r" * 9, limit=10)
    assert state is not None and state.reason is Reason.RECORD_TOO_LARGE
    assert "customer state of 11 bytes is over the 10 byte limit" in state.detail
    record = size_refusal(b"k", b"s" * 9, b"r" * 10, limit=10)
    assert record is not None and "sync record of 11 bytes" in record.detail


def test_an_unchanged_state_is_not_checked_only_its_record() -> None:
    # A duplicate writes no state: a state stored before a lower limit does not refuse it.
    assert size_refusal(b"k", None, b"r" * 9, limit=10) is None
    assert size_refusal(b"k", None, b"r" * 10, limit=10) is not None


@given(key=st.binary(max_size=50), state=st.none() | st.binary(max_size=300), record=st.binary(max_size=300),
       limit=st.integers(1, 400))
def test_refused_exactly_when_a_written_value_with_its_key_passes_the_limit(
    key: bytes, state: bytes | None, record: bytes, limit: int
) -> None:
    written = [record] if state is None else [state, record]
    refused = size_refusal(key, state, record, limit)
    assert (refused is not None) is any(len(key) + len(value) > limit for value in written)


# --- through the fold ----------------------------------------------------------------------------


@pytest.fixture
def table() -> dict[bytes, bytes]:
    return {}


async def grow_until_refused(table: dict[bytes, bytes], outputs: Outputs, limit: int) -> int:
    """Open returns for one customer until the fold refuses one; its number."""
    processor = fold(table, outputs, limit)
    for number in range(200):
        await processor.process(keyed(opened(number), number))
        if outputs.sent["dead"]:
            return number
    raise AssertionError(f"the state never passed {limit} bytes")


async def test_a_state_past_the_limit_is_dead_lettered_and_the_previous_state_kept(
    table: dict[bytes, bytes],
) -> None:
    outputs = Outputs()
    before = failures(Reason.RECORD_TOO_LARGE)
    refused = await grow_until_refused(table, outputs, limit=4096)
    key = opened(0).customer_key.encode()
    state = decode_state(table[key])
    assert state is not None and len(state.returns) == refused  # the refused event is not in it
    assert len(key) + len(table[key]) <= 4096
    [letter] = outputs.dead()
    assert (letter["stage"], letter["reason"]) == ("state", "record_too_large")
    assert "over the 4,096 byte limit" in letter["error"]
    assert letter["origin"]["offset"] == refused
    assert len(outputs.sent["sync"]) == refused  # no sync record for it either
    assert failures(Reason.RECORD_TOO_LARGE) == before + 1

    # Other customers are written as usual.
    other = opened(0, email="mei.chen@example.com")
    await fold(table, outputs, 4096).process(keyed(other, 500))
    assert other.customer_key.encode() in table and len(outputs.dead()) == 1

    # Once the limit allows it, the re-driven event is applied as new, not as a duplicate.
    redriven = Outputs()
    await fold(table, redriven, 1_000_000).process(keyed(opened(refused), 600))
    [(_key, record, _partition)] = redriven.sent["sync"]
    assert decode_sync_record(record).applied is Applied.APPLIED
    after = decode_state(table[key])
    assert after is not None and len(after.returns) == refused + 1


class RefusingTable(dict[bytes, bytes]):
    """A store whose writes fail, as a full disk or a closed producer makes them."""

    def __setitem__(self, key: bytes, value: bytes) -> None:
        raise OSError("no space left on device")


async def test_a_failed_table_write_is_dead_lettered_and_the_worker_carries_on() -> None:
    outputs = Outputs()
    before = failures(Reason.STATE_WRITE_FAILED)
    table = RefusingTable()
    await fold(table, outputs, 1_000_000).process(keyed(opened(1), 7))
    assert dict(table) == {} and outputs.sent["sync"] == []
    [letter] = outputs.dead()
    assert (letter["stage"], letter["reason"]) == ("state", "state_write_failed")
    assert "no space left on device" in letter["error"]
    assert failures(Reason.STATE_WRITE_FAILED) == before + 1


@pytest.mark.parametrize("had_state", [True, False], ids=["known customer", "new customer"])
async def test_a_failed_sync_send_puts_the_previous_state_back(had_state: bool) -> None:
    outputs = Outputs()
    table: dict[bytes, bytes] = {}
    if had_state:
        await fold(table, outputs, 1_000_000).process(keyed(opened(0), 0))
    previous = dict(table)

    async def refusing_sync(key: bytes, record: bytes, partition: int) -> None:
        raise RuntimeError("MessageSizeTooLargeError")

    processor = Fold(table, PARTITIONS, sync=refusing_sync, rekey=outputs.record("rekey"),
                     dead_letters=outputs.dead_letters)
    await processor.process(keyed(opened(1), 1))
    assert table == previous
    assert [letter["reason"] for letter in outputs.dead()] == ["state_write_failed"]
    assert "MessageSizeTooLargeError" in outputs.dead()[0]["error"]


async def test_a_state_that_cannot_be_encoded_is_dead_lettered(table: dict[bytes, bytes]) -> None:
    outputs = Outputs()
    writes = StateWrites(table, outputs.record("sync"), outputs.dead_letters, 1_000_000)
    result = apply_event(None, opened(1))
    broken = Result(replace(result.state, settled_skus=(object(),)), Applied.APPLIED)  # type: ignore[arg-type]
    message = keyed(opened(1), 3)
    assert await writes.write(message.key, None, broken, message, datetime(2026, 6, 1, tzinfo=UTC)) is None
    assert table == {} and outputs.sent["sync"] == []
    assert [letter["reason"] for letter in outputs.dead()] == ["state_write_failed"]
    assert "encoding failed" in outputs.dead()[0]["error"]


def test_both_reasons_are_counted_from_the_first_scrape() -> None:
    metrics.preinitialise()
    for reason in (Reason.RECORD_TOO_LARGE, Reason.STATE_WRITE_FAILED):
        assert metrics.REGISTRY.get_sample_value(
            "returnsync_state_write_failures_total", {"reason": reason.value}) is not None
