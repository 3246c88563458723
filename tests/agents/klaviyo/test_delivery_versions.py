"""Newest state wins: the version floor over every interleaving of records, batches and crashes.

A model of the sync consumer built from the real pure pieces (coalesce, admit, MemoryVersions):
one partition log of sync records (customers interleaved, each customer's in version order,
plus stale copies a zombie producer appended late), consumed in batches of any size; a batch
may crash after sending any subset of its profile writes, and then the consumer restarts from
the last commit with different batch boundaries. Floors are written before sending, as the
worker does. Every customer's writes must reach Klaviyo in non-decreasing version order and end
at the newest version.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from agents.klaviyo.versions import Floor, MemoryVersions
from streams.events import Customer, EventType, ReturnEvent
from streams.outbox import SyncRecord, admit, coalesce
from streams.projection import ProjectionConfig
from streams.reducer import Applied
from streams.state import CustomerState, Identity

CONFIG = ProjectionConfig()
T0 = datetime(2026, 9, 1, tzinfo=UTC)


def record(customer: int, version: int) -> SyncRecord:
    email = f"c{customer}@shop.example"
    key = f"default/{email}"
    # returns_count doubles as the version so a test can read which state Klaviyo holds.
    state = CustomerState(customer_key=key, identity=Identity(email=email), return_count=version,
                          version=version)
    event = ReturnEvent(event_id=f"c{customer}:v{version}", type=EventType.REFUND_ISSUED,
                        occurred_at=T0 + timedelta(minutes=version), customer=Customer(email=email),
                        amount=Decimal("1.00"), currency="USD")
    return SyncRecord(state, event, Applied.APPLIED, T0)


@st.composite
def partition_logs(draw: st.DrawFn) -> list[SyncRecord]:
    counts = draw(st.lists(st.integers(1, 6), min_size=1, max_size=4))
    queues = [[record(c, v) for v in range(1, n + 1)] for c, n in enumerate(counts)]
    log: list[SyncRecord] = []
    while any(queues):
        choice = draw(st.sampled_from([i for i, q in enumerate(queues) if q]))
        log.append(queues[choice].pop(0))
    for _ in range(draw(st.integers(0, 3))):  # a zombie appends an older record late
        stale = draw(st.sampled_from(log))
        log.insert(draw(st.integers(log.index(stale) + 1, len(log))), stale)
    return log


def run(log: list[SyncRecord], data: st.DataObject, *, guard: bool) -> dict[str, list[int]]:
    """Consume the log to the end; returns the versions written to Klaviyo per customer."""
    versions = MemoryVersions()
    written: dict[str, list[int]] = {}
    committed, crashes = 0, 0
    while committed < len(log):
        position = committed
        while position < len(log):
            size = data.draw(st.integers(1, 5), label="batch size")
            batch = log[position:position + size]
            deliveries = coalesce(batch, CONFIG)
            fresh, _ = admit(deliveries, versions.version) if guard else (deliveries, [])
            asyncio.run(versions.record([(d.customer_key, Floor(d.version)) for d in fresh]))
            order = data.draw(st.permutations(range(len(fresh))), label="send order")
            crash_after = len(fresh) + 1
            if crashes < 3 and data.draw(st.booleans(), label="crash"):
                crash_after = data.draw(st.integers(0, len(fresh)), label="sent before crash")
            for sent, index in enumerate(order):
                if sent == crash_after:
                    break
                written.setdefault(fresh[index].customer_key, []).append(fresh[index].version)
            if crash_after <= len(fresh):
                crashes += 1
                break  # restart from the last commit, with new batch boundaries
            position += len(batch)
            if data.draw(st.booleans(), label="commit"):
                committed = position
        else:
            committed = position
    return written


@settings(max_examples=300, deadline=None)
@given(log=partition_logs(), data=st.data())
def test_versions_written_per_customer_never_go_back_and_end_at_the_newest(
    log: list[SyncRecord], data: st.DataObject
) -> None:
    written = run(log, data, guard=True)
    newest: dict[str, int] = {}
    for item in log:
        newest[item.customer_key] = max(newest.get(item.customer_key, 0), item.state.version)
    for key, top in newest.items():
        sequence = written.get(key, [])
        assert sequence == sorted(sequence), f"{key} went back: {sequence}"
        assert sequence and sequence[-1] == top, f"{key} ended at {sequence} not {top}"


def test_without_the_floor_a_rebatched_redelivery_sends_an_older_state_after_a_newer_one() -> None:
    """The hole the floor closes: v1+v2 coalesce to v2, which is sent; the crash comes before the
    commit; on redelivery v1 lands in a batch of its own and would overwrite v2."""
    log = [record(0, 1), record(0, 2)]

    class Script:
        def __init__(self, draws: list[object]) -> None:
            self.draws = draws

        def draw(self, strategy: object, label: str | None = None) -> object:
            return self.draws.pop(0)

    # batch of 2, send order, crash, after 1 write; then batches of 1, order, no crash, commit...
    script = [2, [0], True, 1, 1, [0], False, True, 1, [0], False, True]
    unguarded = run(log, Script(list(script)), guard=False)  # type: ignore[arg-type]
    assert unguarded["default/c0@shop.example"] == [2, 1, 2]
    guarded = run(log, Script([2, [0], True, 1, 1, [], False, True, 1, [0], False, True]), guard=True)  # type: ignore[arg-type]
    assert guarded["default/c0@shop.example"] == [2, 2]
