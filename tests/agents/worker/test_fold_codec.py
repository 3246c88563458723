"""The state agent's byte-level shortcuts agree with the pure codecs they stand in for."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

from agents.worker.fold import DecodedStates
from streams.codec import encode_event, encode_state
from streams.demo import demo_events
from streams.outbox import SyncRecord, decode_sync_record, sync_record_bytes
from streams.reducer import Applied, apply_event, reduce_events

AT = datetime(2026, 10, 1, 12, 0, tzinfo=UTC)


def test_spliced_sync_record_decodes_to_the_same_record() -> None:
    events = demo_events(3, seed=2)
    state = reduce_events(events)
    assert state is not None
    last = events[-1]
    spliced = sync_record_bytes(encode_state(state), encode_event(last), Applied.OUT_OF_ORDER, AT)
    # Delivery gets all of the state but its digest sets, which only the fold uses.
    delivered = replace(state, fact_digests=b"", settled_returns=b"")
    expected = SyncRecord(state=delivered, event=last, applied=Applied.OUT_OF_ORDER, ingested_at=AT)
    assert state.fact_digests, "the demo customer has money facts: the test shows they are left out"
    assert decode_sync_record(spliced) == expected


def test_decoded_states_serve_only_while_the_stored_bytes_match() -> None:
    events = demo_events(1, seed=4)
    first = apply_event(None, events[0]).state
    second = apply_event(first, events[1]).state
    cache = DecodedStates(capacity=2)
    stored = encode_state(first)
    cache.put(b"k", stored, first)
    assert cache.get(b"k", stored) is first
    assert cache.get(b"k", None) is None
    newer = encode_state(second)
    assert cache.get(b"k", newer) == second, "different bytes must be decoded, not served stale"


def test_decoded_states_stay_bounded() -> None:
    state = reduce_events(demo_events(1, seed=4))
    assert state is not None
    cache = DecodedStates(capacity=2)
    for key in (b"a", b"b", b"c"):
        cache.put(key, encode_state(state), state)
    assert len(cache._entries) == 2 and b"a" not in cache._entries
