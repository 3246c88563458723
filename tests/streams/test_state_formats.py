"""Every stored format is still read: a worker upgraded onto a changelog written by an older
returnsync carries on from it, and writes the current format.

`tests/fixtures/state_format_1/` holds table values written by returnsync at commit 137f813
(format 1: JSON only, the last 1,000 event ids): one per canonical fixture of that time, and one
for `serial_history(1200)`. `tests/fixtures/state_format_2/` holds the same written at commit
0ed3562 (format 2: bounded, digests after the JSON; no orders). They were made by running that
commit's `streams.reducer.reduce_events` and `streams.codec.encode_state` over those events.
Fixtures with orders (`order.placed`, format 3) postdate both.
"""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal
from pathlib import Path

import orjson
import pytest

from streams.codec import decode_state, encode_state
from streams.events import EventType, ReturnEvent
from streams.projection import ProjectionConfig, profile_properties
from streams.reducer import CLOSED_KEPT, Applied, apply_event, reduce_events
from streams.state import FORMAT, CustomerState, ReturnRecord
from tests.streams.strategies import event, fixture_names, load_fixture, serial_history

FIXTURES = Path(__file__).parent.parent / "fixtures"
FORMAT_1 = FIXTURES / "state_format_1"
FORMAT_2 = FIXTURES / "state_format_2"
CONFIG = ProjectionConfig()


def all_histories() -> list[tuple[str, list[ReturnEvent]]]:
    named = [(name.removesuffix(".jsonl"), load_fixture(name)) for name in fixture_names()]
    return [*named, ("serial_history_1200", serial_history(1200))]


def histories() -> list[tuple[str, list[ReturnEvent]]]:
    """The histories formats 1 and 2 could hold: those without orders."""
    return [(name, events) for name, events in all_histories()
            if all(item.type is not EventType.ORDER_PLACED for item in events)]


def without_return_extras(state: CustomerState) -> CustomerState:
    """The state as format 2 could hold it: returns without what format 3 added to them."""
    def stripped(record: ReturnRecord) -> ReturnRecord:
        stamps = {name: stamp for name, stamp in record.details_version.items()
                  if name not in ("source", "currency")}
        return replace(record, source=None, currency=None, items=(), refund_total=Decimal(0),
                       store_credit_total=Decimal(0), details_version=stamps)
    return replace(state, returns={key: stripped(record) for key, record in state.returns.items()})


def format_1(name: str) -> bytes:
    return (FORMAT_1 / f"{name}.json").read_bytes().rstrip(b"\n")


def format_2(name: str) -> bytes:
    return (FORMAT_2 / f"{name}.state").read_bytes()


def test_every_history_has_its_format_1_and_2_values() -> None:
    assert {path.stem for path in FORMAT_1.glob("*.json")} == {name for name, _ in histories()}
    assert {path.stem for path in FORMAT_2.glob("*.state")} == {name for name, _ in histories()}
    assert len(histories()) < len(all_histories()), "a fixture with orders is checked in format 3"
    for name, _ in histories():
        assert "format" not in orjson.loads(format_1(name)), "format 1 predates the key"
        head = orjson.loads(format_2(name).partition(b"\n")[0])
        assert head["format"] == 2 and len(head["digest_sizes"]) == 2 and "order_count" not in head


@pytest.mark.parametrize(("name", "events"), histories(), ids=[name for name, _ in histories()])
def test_a_format_2_state_reads_as_the_same_customer_without_orders(
    name: str, events: list[ReturnEvent]
) -> None:
    upgraded = decode_state(format_2(name))
    current = reduce_events(events)
    assert upgraded is not None and current is not None
    assert upgraded.fact_digests == current.fact_digests
    assert upgraded.settled_returns == current.settled_returns
    assert (upgraded.order_count, upgraded.order_digests, upgraded.order_totals) == (0, b"", {})
    # Refund currencies are new in format 3: a format-2 state's refunds count as the store's currency.
    # So are each return's platform, currency and own money (for custom objects): those start empty.
    assert replace(upgraded, refund_currencies=current.refund_currencies) == without_return_extras(current)
    assert profile_properties(upgraded, CONFIG) == profile_properties(current, CONFIG)
    for old in events:
        assert apply_event(upgraded, old).applied is Applied.DUPLICATE or old.type.is_status, old.event_id


@pytest.mark.parametrize(("name", "events"), histories(), ids=[name for name, _ in histories()])
def test_orders_after_a_format_2_state_count_and_write_format_3(name: str, events: list[ReturnEvent]) -> None:
    upgraded = decode_state(format_2(name))
    assert upgraded is not None
    email = upgraded.identity.email
    order = event("order.placed", event_id="after-upgrade:order", customer=email, order_ref="#after",
                  occurred_at="2031-01-01T00:00:00Z", amount="10.00", currency="USD", item_count=2)
    after = apply_event(upgraded, order).state
    assert (after.order_count, after.ordered_item_count) == (1, 2)
    assert apply_event(after, order).applied is Applied.DUPLICATE
    stored = encode_state(after)
    assert orjson.loads(stored.partition(b"\n")[0])["format"] == FORMAT == 3
    assert decode_state(stored) == after
    assert profile_properties(after, CONFIG)["returns_orders_count"] == 1


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


@pytest.mark.parametrize(("name", "events"), all_histories(), ids=[name for name, _ in all_histories()])
def test_the_current_format_reads_back(name: str, events: list[ReturnEvent]) -> None:
    state = reduce_events(events)
    assert state is not None
    assert decode_state(encode_state(state)) == state


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


def test_a_format_from_a_newer_release_is_refused_not_guessed() -> None:
    stored = encode_state(reduce_events(load_fixture(fixture_names()[0])))  # type: ignore[arg-type]
    head, _, digests = stored.partition(b"\n")
    newer = orjson.dumps({**orjson.loads(head), "format": FORMAT + 1}) + b"\n" + digests
    with pytest.raises(ValueError, match="newer than this release"):
        decode_state(newer)
