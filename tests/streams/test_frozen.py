"""streams.frozen.replace against dataclasses.replace, for the classes the reducer evolves."""

from __future__ import annotations

import dataclasses

import pytest

from streams import frozen
from streams.demo import demo_customers
from streams.reducer import reduce_events
from streams.state import CustomerState, ReturnRecord, state_to_bytes


def _state() -> CustomerState:
    state = reduce_events(next(iter(demo_customers(1, seed=3))))
    assert state is not None and state.returns
    return state


def test_same_value_as_dataclasses_replace() -> None:
    state = _state()
    assert frozen.replace(state, version=99) == dataclasses.replace(state, version=99)
    assert frozen.replace(state) == state
    record = next(iter(state.returns.values()))
    changed = frozen.replace(record, status="closed", item_count=7)
    assert changed == dataclasses.replace(record, status="closed", item_count=7)
    assert (changed.status, changed.item_count, changed.return_id) == ("closed", 7, record.return_id)


def test_caches_start_empty_in_the_copy() -> None:
    state = _state()
    state_to_bytes(state)  # encoding fills each record's json_cache
    record = next(iter(state.returns.values()))
    assert record.json_cache is not None
    assert frozen.replace(record, reason="too big").json_cache is None


def test_unknown_field_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="no field colour"):
        frozen.replace(_state(), colour="red")


def test_refuses_a_class_with_post_init() -> None:
    @dataclasses.dataclass(frozen=True)
    class Checked:
        value: int

        def __post_init__(self) -> None:
            if self.value < 0:
                raise ValueError("negative")

    with pytest.raises(TypeError, match="__post_init__"):
        frozen.replace(Checked(1), value=-1)


def test_record_class_is_supported() -> None:
    assert frozen.replace(ReturnRecord(return_id="r1"), status="requested").status == "requested"
