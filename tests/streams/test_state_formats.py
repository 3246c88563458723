"""Every stored format is still read: a worker upgraded onto a changelog written by an older
returnsync carries on from it, and writes the current format.

`tests/fixtures/state_format_1/` holds table values written by returnsync at commit 137f813
(format 1: JSON only, the last 1,000 event ids): one per canonical fixture, and one for
`serial_history(1200)`. They were made by running that commit's `streams.reducer.reduce_events`
and `streams.codec.encode_state` over those events. `tests/fixtures/state_format_2/` holds the
same, written by commit 0ed3562 (format 2: bounded, digests after the JSON, stamps in full).
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from streams.codec import decode_state, encode_state
from streams.events import ReturnEvent
from streams.projection import ProjectionConfig, profile_properties
from streams.reducer import CLOSED_KEPT, Applied, apply_event, reduce_events
from streams.state import FORMAT, CustomerState
from tests.streams.strategies import event, fixture_names, load_fixture, serial_history

FORMAT_1 = Path(__file__).parent.parent / "fixtures" / "state_format_1"
FORMAT_2 = Path(__file__).parent.parent / "fixtures" / "state_format_2"
CONFIG = ProjectionConfig()


def histories() -> list[tuple[str, list[ReturnEvent]]]:
    named = [(name.removesuffix(".jsonl"), load_fixture(name)) for name in fixture_names()]
    return [*named, ("serial_history_1200", serial_history(1200))]


def format_1(name: str) -> bytes:
    return (FORMAT_1 / f"{name}.json").read_bytes().rstrip(b"\n")


def test_every_history_has_its_format_1_value() -> None:
    assert {path.stem for path in FORMAT_1.glob("*.json")} == {name for name, _ in histories()}
    for name, _ in histories():
        assert "format" not in orjson.loads(format_1(name)), "format 1 predates the key"


@pytest.mark.parametrize(("name", "events"), histories(), ids=[name for name, _ in histories()])
def test_a_format_1_state_reads_as_the_same_customer(name: str, events: list[ReturnEvent]) -> None:
    upgraded = decode_state(format_1(name))
    assert upgraded is not None
    current = reduce_events(events)
    assert current is not None
    assert profile_properties(upgraded, CONFIG) == profile_properties(current, CONFIG)
    assert (upgraded.customer_key, upgraded.identity) == (current.customer_key, current.identity)


@pytest.mark.parametrize(("name", "events"), histories(), ids=[name for name, _ in histories()])
def test_events_applied_before_the_upgrade_stay_applied(name: str, events: list[ReturnEvent]) -> None:
    upgraded = decode_state(format_1(name))
    assert upgraded is not None
    # The last 1,000 ids were what format 1 promised: those must still be duplicates.
    for old in events[-1000:]:
        result = apply_event(upgraded, old)
        assert result.applied is Applied.DUPLICATE, old.event_id
        assert result.state == upgraded


@pytest.mark.parametrize(("name", "events"), histories(), ids=[name for name, _ in histories()])
def test_the_next_write_is_the_current_format_and_reads_back(name: str, events: list[ReturnEvent]) -> None:
    upgraded = decode_state(format_1(name))
    assert upgraded is not None
    stored = encode_state(upgraded)
    assert orjson.loads(stored.partition(b"\n")[0])["format"] == FORMAT
    assert decode_state(stored) == upgraded


def test_an_upgraded_long_history_settles_to_a_bounded_state_on_its_next_event() -> None:
    upgraded = decode_state(format_1("serial_history_1200"))
    assert upgraded is not None
    before = len(format_1("serial_history_1200"))
    new = event("return.requested", return_id="after-upgrade", customer="noemail@store.com",
                occurred_at="2031-01-01T00:00:00Z", event_id="after-upgrade:requested")
    after: CustomerState = apply_event(upgraded, new).state
    closed = [record for record in after.returns.values() if record.counted and not record.active]
    assert len(closed) <= CLOSED_KEPT
    assert after.return_count == upgraded.return_count + 1
    assert {record.return_id for record in after.active_returns} >= {"after-upgrade"}
    assert len(encode_state(after)) < before / 4


def format_2(name: str) -> bytes:
    return (FORMAT_2 / f"{name}.bin").read_bytes()


def test_every_history_has_its_format_2_value() -> None:
    assert {path.stem for path in FORMAT_2.glob("*.bin")} == {name for name, _ in histories()}
    for name, _ in histories():
        assert orjson.loads(format_2(name).partition(b"\n")[0])["format"] == 2


@pytest.mark.parametrize(("name", "events"), histories(), ids=[name for name, _ in histories()])
def test_a_format_2_state_is_the_same_customer(name: str, events: list[ReturnEvent]) -> None:
    # Format 3 changed how records are written; nothing format 2 held may be lost or differ.
    # (Returns now also keep their item lines and money for custom objects: those start empty.)
    upgraded, current = decode_state(format_2(name)), reduce_events(events)
    assert upgraded is not None and current is not None
    assert profile_properties(upgraded, CONFIG) == profile_properties(current, CONFIG)
    assert (upgraded.identity, upgraded.version, upgraded.fact_digests, upgraded.settled_returns) == (
        current.identity, current.version, current.fact_digests, current.settled_returns)
    for return_id, record in current.returns.items():
        old = upgraded.returns[return_id]
        assert (old.status, old.status_version, old.skus, old.item_count, old.value, old.fact_ids) == (
            record.status, record.status_version, record.skus, record.item_count, record.value,
            record.fact_ids)


@pytest.mark.parametrize(("name", "events"), histories(), ids=[name for name, _ in histories()])
def test_a_format_2_state_carries_on_as_the_current_one(name: str, events: list[ReturnEvent]) -> None:
    upgraded = decode_state(format_2(name))
    assert upgraded is not None
    for old in events:  # everything it had applied stays applied: a replay changes nothing
        result = apply_event(upgraded, old)
        # (a status event of a settled return is out of order rather than a duplicate)
        assert result.applied in (Applied.DUPLICATE, Applied.OUT_OF_ORDER), old.event_id
        assert result.state == upgraded, old.event_id
    stored = encode_state(upgraded)
    assert orjson.loads(stored.partition(b"\n")[0])["format"] == FORMAT == 3
    assert decode_state(stored) == upgraded
