"""Consumer lag per topic and partition, in messages and (estimated) seconds.

Lag is measured against what the agents *processed* (Faust agents) or *delivered and committed*
(the sync consumer), never against what a consumer fetched: consumers buffer ahead, and a stuck
agent with a full buffer must still show lag. The end of each partition is asked of the broker
on a schedule of its own (ListOffsets), not taken from the last fetch response: a consumer that
stopped fetching (its buffer is full, delivery is blocked) would otherwise report a frozen end.

Seconds: the age of the oldest record not yet processed, now minus its timestamp when that
record is known; otherwise now minus the latest moment it cannot predate (the timestamp of the
last record processed, or when the partition was last seen caught up): an upper bound, which
keeps growing while the partition is stuck. Lag 0 is 0 seconds.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from agents import metrics
from agents.offsets import partition_ends

log = logging.getLogger(__name__)

INTERVAL_SECONDS = 3.0
"""How often lag is measured, independently of how the consumers are doing."""

Key = tuple[str, int]
"""(topic, partition)."""
Measurement = tuple[tuple[str, str], int, float]
"""((topic, partition label), lag in messages, lag in seconds)."""


def age(now: float, lag: int, *, oldest: float | None = None, not_before: Iterable[float | None] = (),
        fallback: float | None = None) -> float:
    """Estimated age in seconds of the oldest of `lag` unprocessed records.

    `oldest`: its timestamp when known. `not_before`: moments it cannot predate (any may be None).
    `fallback`: used when nothing else is known (e.g. when the partition was assigned).
    """
    if lag <= 0:
        return 0.0
    if oldest is None:
        bounds = [moment for moment in not_before if moment is not None]
        oldest = max(bounds) if bounds else fallback
    return 0.0 if oldest is None else max(0.0, now - oldest)


def _timestamp_seconds(timestamp_ms: int | None) -> float | None:
    return timestamp_ms / 1000 if timestamp_ms is not None and timestamp_ms > 0 else None


# --- Faust agents ----------------------------------------------------------------------------


@dataclass
class Progress:
    """Last processed offset and record timestamp per (topic, partition), for the Faust agents."""

    processed: dict[Key, tuple[int, float]] = field(default_factory=dict)
    assigned_at: dict[Key, float] = field(default_factory=dict)
    caught_up_at: dict[Key, float] = field(default_factory=dict)

    def record(self, message: Any) -> None:
        timestamp = message.timestamp or time.time()  # Faust: seconds
        self.processed[(message.topic, message.partition)] = (message.offset, timestamp)

    def assigned(self, keys: Iterable[Key], now: float) -> None:
        for key in keys:
            self.assigned_at.setdefault(key, now)

    def forget(self, keys: Iterable[Key]) -> None:
        """Revoked: whatever this worker knew of them is stale by the time they come back."""
        for key in keys:
            for known in (self.processed, self.assigned_at, self.caught_up_at):
                known.pop(key, None)

    def measure(self, key: Key, end: int, fallback_next: int | None, now: float) -> Measurement | None:
        """`end`: the partition's end offset; `fallback_next`: the next offset to process when
        nothing was processed here yet (the committed offset, else the consumer position)."""
        last = self.processed.get(key)
        next_offset = last[0] + 1 if last else fallback_next
        if next_offset is None:
            return None
        lag = max(0, end - next_offset)
        if lag == 0:
            self.caught_up_at[key] = now
        seconds = age(now, lag, not_before=(last[1] if last else None, self.caught_up_at.get(key)),
                      fallback=self.assigned_at.setdefault(key, now))
        return (key[0], str(key[1])), lag, seconds


def register(runtime: Any, topics: set[str]) -> None:
    """Measure the lag of the Faust agents consuming `topics`, every INTERVAL_SECONDS."""
    app, progress = runtime.app, runtime.progress

    @app.on_partitions_assigned.connect  # type: ignore[untyped-decorator]
    async def lag_assigned(sender: Any, assigned: Iterable[Any], **kwargs: Any) -> None:
        progress.assigned(((tp.topic, tp.partition) for tp in assigned), time.time())

    @app.on_partitions_revoked.connect  # type: ignore[untyped-decorator]
    async def lag_revoked(sender: Any, revoked: Iterable[Any], **kwargs: Any) -> None:
        progress.forget((tp.topic, tp.partition) for tp in revoked)

    @app.timer(interval=INTERVAL_SECONDS)  # type: ignore[untyped-decorator]
    async def measure_lag() -> None:
        # An exception in a Faust timer stops the worker; a measurement is only worth a log line.
        try:
            await measure_faust_lag(app.consumer, progress, topics)
        except Exception as exc:  # a rebalance or the broker went away mid-measurement
            log.warning("lag not measured this time: %r", exc)


async def measure_faust_lag(consumer: Any, progress: Progress, topics: set[str]) -> None:
    """One measurement of every partition of `topics` assigned now."""
    partitions = [tp for tp in (consumer.assignment() if consumer else ()) if tp.topic in topics]
    ends = await _faust_ends(consumer, partitions)
    # Faust's own record of what it committed (the next offset, since faust#33): used for a
    # partition that processed nothing since it was assigned. Not public API, hence getattr.
    committed: Mapping[Any, int | None] = getattr(consumer, "_committed_offset", {})
    now = time.time()
    measured: list[Measurement] = []
    for tp in partitions:
        end = ends.get(tp)
        if end is None or not _still_assigned(consumer, tp):
            continue
        key = (tp.topic, tp.partition)
        fallback = None
        if key not in progress.processed:
            fallback = committed.get(tp)
            if fallback is None:
                fallback = await consumer.position(tp)
        measurement = progress.measure(key, end, fallback, now)
        if measurement is not None:
            measured.append(measurement)
    report_lag("faust", measured)


async def _faust_ends(consumer: Any, partitions: list[Any]) -> Mapping[Any, int]:
    if not partitions:
        return {}
    try:
        listed = dict(await consumer.highwaters(*partitions))
    except Exception as exc:  # the broker is unreachable: the last fetch's view is all we have
        log.debug("end offsets unavailable, using the last fetched highwaters: %r", exc)
        listed = {}
    # A rebalance may have run during the await: aiokafka asserts on a partition not assigned.
    fetched = {tp: consumer.highwater(tp) for tp in partitions if _still_assigned(consumer, tp)}
    return {tp: end for tp, end in partition_ends(listed, fetched).items() if tp in fetched}


def _still_assigned(consumer: Any, tp: Any) -> bool:
    """Whether `tp` is assigned now: asking aiokafka about a revoked one raises AssertionError,
    which would crash the worker from a timer."""
    return tp in set(consumer.assignment())


# --- the sync consumer -----------------------------------------------------------------------


@dataclass
class _Batch:
    first: int
    first_at: float | None
    last_at: float | None


@dataclass
class _Partition:
    generation: int
    assigned_at: float
    settled: int | None = None
    """Next offset after the last record delivered and committed."""
    settled_at: float | None = None
    """Timestamp of the last record delivered and committed."""
    caught_up_at: float | None = None
    fetched: deque[_Batch] = field(default_factory=deque)
    """Batches fetched and not yet committed, oldest first."""


class DeliveryLag:
    """Lag of a consumer that commits only what it delivered (agents/worker/deliver.py).

    Fed by the consumer (assigned, fetched, settled, revoked) and measured on a schedule of its
    own, so a delivery stuck on Klaviyo shows lag growing in messages and seconds.
    """

    def __init__(self) -> None:
        self._partitions: dict[Key, _Partition] = {}
        self._generation = 0

    def assigned(self, keys: Iterable[Key], now: float) -> None:
        for key in keys:
            self._generation += 1
            self._partitions[key] = _Partition(self._generation, now)

    def forget(self, keys: Iterable[Key]) -> None:
        for key in keys:
            self._partitions.pop(key, None)

    def unseeded(self, keys: Iterable[Key]) -> dict[Key, int]:
        """Assigned partitions whose committed offset is not known yet, with their generation."""
        return {key: part.generation for key in keys
                if (part := self._partitions.get(key)) is not None and part.settled is None}

    def seed(self, key: Key, committed: int, generation: int) -> None:
        """The committed offset found after assignment (ignored if reassigned meanwhile)."""
        part = self._partitions.get(key)
        if part is not None and part.generation == generation and part.settled is None:
            part.settled = committed

    def fetched(self, key: Key, first: int, first_timestamp_ms: int | None,
                last_timestamp_ms: int | None) -> None:
        part = self._partitions.get(key)
        if part is not None:
            part.fetched.append(_Batch(first, _timestamp_seconds(first_timestamp_ms),
                                       _timestamp_seconds(last_timestamp_ms)))

    def settled(self, key: Key, next_offset: int) -> None:
        """Delivered and committed up to `next_offset` (exclusive)."""
        part = self._partitions.get(key)
        if part is None or (part.settled is not None and next_offset < part.settled):
            return
        part.settled = next_offset
        while part.fetched and part.fetched[0].first < next_offset:
            batch = part.fetched.popleft()
            part.settled_at = batch.last_at or part.settled_at

    def measure(self, ends: Mapping[Key, int], now: float) -> list[Measurement]:
        """One measurement per partition with a known end and committed offset."""
        measured: list[Measurement] = []
        for key, end in ends.items():
            part = self._partitions.get(key)
            if part is None or part.settled is None:
                continue
            lag = max(0, end - part.settled)
            if lag == 0:
                part.caught_up_at = now
            head = part.fetched[0] if part.fetched else None
            oldest = head.first_at if head is not None and head.first == part.settled else None
            later = head.first_at if head is not None else None
            seconds = age(now, lag, oldest=oldest, not_before=(part.settled_at, part.caught_up_at),
                          fallback=later if later is not None else part.assigned_at)
            measured.append(((key[0], str(key[1])), lag, seconds))
        return measured


# --- gauges ----------------------------------------------------------------------------------

_reported: dict[str, set[tuple[str, str]]] = {}


def report_lag(owner: str, measured: list[Measurement]) -> None:
    """Set lag gauges for one consumer; partitions it no longer owns are removed, not left stale."""
    current = {labels for labels, _, _ in measured}
    for labels in _reported.get(owner, set()) - current:
        for gauge in (metrics.CONSUMER_LAG_MESSAGES, metrics.CONSUMER_LAG_SECONDS):
            with contextlib.suppress(KeyError):
                gauge.remove(*labels)
    for labels, lag, seconds in measured:
        metrics.CONSUMER_LAG_MESSAGES.labels(*labels).set(lag)
        metrics.CONSUMER_LAG_SECONDS.labels(*labels).set(seconds)
    _reported[owner] = current
