"""Consumer lag per topic and partition, in messages and (estimated) seconds.

Lag is measured against what the agents *processed*, not what the consumer fetched: Faust
buffers ahead, and a stuck agent with a full buffer must still show lag.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

from agents import metrics


@dataclass
class Progress:
    """Last processed offset and record timestamp per (topic, partition)."""

    processed: dict[tuple[str, int], tuple[int, float]] = field(default_factory=dict)
    assigned_at: float = field(default_factory=time.time)

    def record(self, message: Any) -> None:
        timestamp = message.timestamp or time.time()
        self.processed[(message.topic, message.partition)] = (message.offset, timestamp)


def register(runtime: Any, topics: set[str]) -> None:
    app, progress = runtime.app, runtime.progress

    @app.timer(interval=5.0)  # type: ignore[untyped-decorator]
    async def measure_lag() -> None:
        now = time.time()
        assignment = app.consumer.assignment() if app.consumer else set()
        measured: list[Measurement] = []
        for tp in assignment:
            if tp.topic not in topics:
                continue
            highwater = app.consumer.highwater(tp)
            if highwater is None:
                continue
            last = progress.processed.get((tp.topic, tp.partition))
            next_offset = last[0] + 1 if last else await app.consumer.position(tp) or 0
            lag = max(0, highwater - next_offset)
            # The next record is no older than the last one processed, so this bounds its age.
            seconds = 0.0 if lag == 0 else now - (last[1] if last else progress.assigned_at)
            measured.append(((tp.topic, str(tp.partition)), lag, max(0.0, seconds)))
        report_lag("faust", measured)


Measurement = tuple[tuple[str, str], int, float]
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
