"""Lag arithmetic (agents/worker/lag.py): messages against what was processed or delivered, seconds
from the oldest undelivered record, growing while a partition is stuck."""

from __future__ import annotations

from types import SimpleNamespace

from faust.types import TP

from agents import metrics
from agents.offsets import partition_ends
from agents.worker.lag import DeliveryLag, Progress, age, measure_faust_lag, report_lag

SYNC = ("app-klaviyo-sync", 0)
T0 = 1_800_000_000.0


def ms(seconds: float) -> int:
    return int(seconds * 1000)


def only(measured: list[tuple[tuple[str, str], int, float]]) -> tuple[int, float]:
    assert len(measured) == 1
    _, lag, seconds = measured[0]
    return lag, seconds


def test_age_prefers_the_known_oldest_record_then_the_latest_bound_then_the_fallback() -> None:
    assert age(T0, 0, oldest=T0 - 50) == 0.0
    assert age(T0, 3, oldest=T0 - 50, not_before=(T0 - 10,)) == 50.0
    assert age(T0, 3, not_before=(T0 - 40, None, T0 - 10), fallback=T0 - 99) == 10.0
    assert age(T0, 3, not_before=(None,), fallback=T0 - 99) == 99.0
    assert age(T0, 3) == 0.0
    assert age(T0, 3, oldest=T0 + 5) == 0.0, "a clock ahead of ours is not negative lag"


def test_a_stalled_delivery_shows_lag_growing_in_messages_and_seconds() -> None:
    lag = DeliveryLag()
    lag.assigned([SYNC], T0)
    assert lag.measure({SYNC: 10}, T0) == [], "no sample before the committed offset is known"
    lag.seed(SYNC, 10, lag.unseeded([SYNC])[SYNC])
    assert only(lag.measure({SYNC: 10}, T0 + 1)) == (0, 0.0)

    # Five records arrive and are fetched; Klaviyo is down, so nothing settles.
    lag.fetched(SYNC, 10, ms(T0 + 2), ms(T0 + 3))
    assert only(lag.measure({SYNC: 15}, T0 + 5)) == (5, 3.0)
    # More keep arriving (not fetched: the pipeline waits): messages and seconds both grow.
    assert only(lag.measure({SYNC: 40}, T0 + 65)) == (30, 63.0)

    # Klaviyo recovers: the first batch commits, the next one is the oldest now.
    lag.fetched(SYNC, 15, ms(T0 + 20), ms(T0 + 60))
    lag.settled(SYNC, 15)
    assert only(lag.measure({SYNC: 40}, T0 + 70)) == (25, 50.0)
    lag.settled(SYNC, 40)
    assert only(lag.measure({SYNC: 40}, T0 + 71)) == (0, 0.0)


def test_seconds_of_a_partition_whose_next_record_was_never_fetched_are_bounded() -> None:
    lag = DeliveryLag()
    lag.assigned([SYNC], T0)
    lag.seed(SYNC, 0, lag.unseeded([SYNC])[SYNC])
    lag.fetched(SYNC, 0, ms(T0 + 1), ms(T0 + 2))
    lag.settled(SYNC, 3)
    assert only(lag.measure({SYNC: 3}, T0 + 10)) == (0, 0.0)  # caught up at T0+10
    # A record arrived after that, while delivery is blocked elsewhere: not fetched, so its
    # timestamp is unknown; it cannot predate the moment the partition was last caught up.
    assert only(lag.measure({SYNC: 4}, T0 + 40)) == (1, 30.0)
    assert only(lag.measure({SYNC: 4}, T0 + 100)) == (1, 90.0)


def test_a_freshly_assigned_backlog_counts_from_the_first_fetched_record_or_the_assignment() -> None:
    lag = DeliveryLag()
    lag.assigned([SYNC], T0)
    lag.seed(SYNC, 100, lag.unseeded([SYNC])[SYNC])
    assert only(lag.measure({SYNC: 500}, T0 + 7)) == (400, 7.0)
    lag.fetched(SYNC, 100, ms(T0 - 600), ms(T0 - 500))
    assert only(lag.measure({SYNC: 500}, T0 + 10)) == (400, 610.0)


def test_revocation_forgets_and_a_stale_seed_is_ignored() -> None:
    lag = DeliveryLag()
    lag.assigned([SYNC], T0)
    generation = lag.unseeded([SYNC])[SYNC]
    lag.forget([SYNC])
    lag.assigned([SYNC], T0 + 1)  # reassigned while the committed offset was being asked for
    lag.seed(SYNC, 5, generation)
    assert lag.measure({SYNC: 9}, T0 + 2) == []
    lag.seed(SYNC, 8, lag.unseeded([SYNC])[SYNC])
    lag.seed(SYNC, 2, lag.unseeded([SYNC]).get(SYNC, 0))  # already seeded: no effect
    assert only(lag.measure({SYNC: 9}, T0 + 3))[0] == 1
    lag.forget([SYNC])
    lag.fetched(SYNC, 8, ms(T0), ms(T0))  # not assigned: ignored, not resurrected
    lag.settled(SYNC, 9)
    assert lag.measure({SYNC: 9}, T0 + 4) == [] and lag.unseeded([SYNC]) == {}


def test_settling_never_moves_the_offset_backwards() -> None:
    lag = DeliveryLag()
    lag.assigned([SYNC], T0)
    lag.seed(SYNC, 0, lag.unseeded([SYNC])[SYNC])
    lag.settled(SYNC, 20)
    lag.settled(SYNC, 10)
    assert only(lag.measure({SYNC: 20}, T0)) == (0, 0.0)


def message(topic: str, partition: int, offset: int, timestamp: float) -> SimpleNamespace:
    return SimpleNamespace(topic=topic, partition=partition, offset=offset, timestamp=timestamp)


def test_faust_progress_counts_from_the_last_processed_record() -> None:
    raw = ("returns.raw", 2)
    progress = Progress()
    progress.assigned([raw], T0)
    # Nothing processed since the assignment: the committed offset says where it stands.
    assert progress.measure(raw, 10, 4, T0 + 5) == (("returns.raw", "2"), 6, 5.0)
    assert progress.measure(raw, 10, None, T0 + 5) is None
    progress.record(message("returns.raw", 2, 9, T0 + 1))
    assert progress.measure(raw, 10, None, T0 + 6) == (("returns.raw", "2"), 0, 0.0)
    # A new webhook the agent does not get to: no older than the moment it was caught up.
    assert progress.measure(raw, 11, None, T0 + 20) == (("returns.raw", "2"), 1, 14.0)
    progress.forget([raw])
    assert progress.measure(raw, 11, 11, T0 + 21) == (("returns.raw", "2"), 0, 0.0)


def sample(name: str, topic: str, partition: str) -> float | None:
    return metrics.REGISTRY.get_sample_value(name, {"topic": topic, "partition": partition})


def test_report_lag_removes_partitions_no_longer_owned() -> None:
    owner = "unit-test"
    report_lag(owner, [(("unit.topic", "0"), 3, 1.5), (("unit.topic", "1"), 0, 0.0)])
    assert sample("returnsync_consumer_lag_messages", "unit.topic", "0") == 3
    assert sample("returnsync_consumer_lag_seconds", "unit.topic", "0") == 1.5
    report_lag(owner, [(("unit.topic", "1"), 2, 4.0)])
    assert sample("returnsync_consumer_lag_messages", "unit.topic", "0") is None
    assert sample("returnsync_consumer_lag_seconds", "unit.topic", "1") == 4.0
    report_lag(owner, [])
    assert sample("returnsync_consumer_lag_messages", "unit.topic", "1") is None


def test_a_partition_ends_at_the_larger_of_listoffsets_and_the_last_fetch() -> None:
    # Tansu answers ListOffsets with the last batch's base + 1 (81 of 100); a consumer that stopped
    # fetching has an older highwater (60); a partition only one of them knows keeps that one.
    listed = {"p0": 81, "p1": 100, "p2": None}
    fetched = {"p0": 100, "p1": 60, "p2": 7, "p3": None}
    assert partition_ends(listed, fetched) == {"p0": 100, "p1": 100, "p2": 7}


class _RevokingConsumer:
    """Behaves like aiokafka where it matters: asking about a partition not assigned asserts.
    Partition 1 is revoked while the end offsets are being listed, as a rebalance would."""

    def __init__(self) -> None:
        self.assigned = {TP("t", 0), TP("t", 1)}

    def assignment(self) -> set[TP]:
        return set(self.assigned)

    async def highwaters(self, *partitions: TP) -> dict[TP, int]:
        self.assigned.discard(TP("t", 1))
        return {tp: 10 for tp in partitions}

    def highwater(self, tp: TP) -> int:
        assert tp in self.assigned, "Partition is not assigned"
        return 10

    async def position(self, tp: TP) -> int:
        assert tp in self.assigned, "Partition is not assigned"
        return 4


async def test_a_partition_revoked_during_a_measurement_is_skipped_not_fatal() -> None:
    consumer, progress = _RevokingConsumer(), Progress()
    await measure_faust_lag(consumer, progress, {"t"})
    assert sample("returnsync_consumer_lag_messages", "t", "0") == 6
    assert sample("returnsync_consumer_lag_messages", "t", "1") is None
    report_lag("faust", [])
