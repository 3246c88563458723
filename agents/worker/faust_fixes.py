"""Workarounds for recovery bugs that lose or stale state on a restart: Faust's (always applied)
and the embedded Tansu broker's (applied only on Tansu).

Each is applied to the one app a worker runs and says which upstream problem it answers; remove
it when Faust or the broker fixes the cause. Both were seen here as a restarted worker skipping
part of a backlog (tests/integration/test_recovery.py).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import faust
from faust.tables.recovery import Recovery
from faust.transport.consumer import Consumer

from agents.kafka import KafkaConnection
from agents.offsets import fetched_ends


def apply(app: faust.App, tansu: KafkaConnection | None) -> None:
    """`tansu`: the connection, when the cluster is Tansu (agents/devstack/broker.py: runs_tansu); on
    Kafka its workaround would only cost an extra consumer and up to 10 s per recovery."""
    keep_events_fetched_before_recovery_ends(app)
    start_uncommitted_partitions_from_their_beginning()
    if tansu is not None:
        recover_changelogs_to_their_true_end(tansu)


def keep_events_fetched_before_recovery_ends(app: faust.App) -> None:
    """Work around faust-streaming/faust#596: a worker's first recovery drops events.

    At the end of recovery Faust resumes the stream partitions, seeks them to their committed
    offsets, then resumes flow control, which clears every agent's buffer. On a first
    assignment flow control was never suspended, so the fetcher has been filling those buffers
    during the seek; clearing them loses the events, and their offsets are already marked read,
    so they are dropped again when re-fetched. The commit then stalls at the gap. Seen here as a
    restarted worker silently skipping hundreds of events of a backlog. Resuming what was never
    suspended has nothing to undo, so it keeps the buffers; a real resume (after a rebalance
    suspended flow and cleared the buffers itself) is unchanged.
    """
    flow_control = app.flow_control
    resume = flow_control.resume

    def resume_keeping_buffers() -> None:
        if not flow_control.is_active():
            resume()

    flow_control.resume = resume_keeping_buffers  # type: ignore[method-assign]  # this instance only


def start_uncommitted_partitions_from_their_beginning() -> None:
    """A stream partition nobody has committed yet is read from offset 0, whatever the consumer
    was positioned at when the partition arrived.

    Seen here (tests/integration/test_deployment.py): a worker killed before its first commit on
    a partition left it uncommitted; the worker that took it over started at the partition's
    end as it was then, not at its beginning (`auto_offset_reset` is earliest), and Faust's gap
    tracking then committed over the skipped events: 40 events never folded, never delivered.
    After Faust's own seek to the committed offsets, each such partition is sought to 0 (below
    the log start, the consumer resets to the earliest offset) and what Faust already counted as
    acknowledged there is forgotten, so no commit can pass events not folded yet. Events read
    twice meanwhile are duplicates the reducer ignores.
    """
    if getattr(Consumer.perform_seek, "starts_uncommitted", False):
        return
    seek = Consumer.perform_seek

    async def perform_seek(self: Consumer) -> None:
        await seek(self)
        changelogs = self.app.tables.changelog_topics
        for tp in self.assignment():
            if tp.topic in changelogs or self._committed_offset.get(tp) is not None:
                continue
            await self.seek(tp, 0)
            for tracked in (self._acked, self._acked_index, self._gap):
                tracked.pop(tp, None)

    perform_seek.starts_uncommitted = True  # type: ignore[attr-defined]
    Consumer.perform_seek = perform_seek  # type: ignore[method-assign]


def recover_changelogs_to_their_true_end(kafka: KafkaConnection) -> None:
    """Recovery reads each changelog partition to the end ListOffsets gives. Tansu (the
    embedded broker) answers a batch short (agents/devstack/broker.py: partition_ends), so a restarted
    worker left the last batch of every changelog partition unread and applied new events to
    older states. The ends are checked against a fetch; on Kafka they agree.
    """
    if getattr(Recovery._build_highwaters, "checks_ends", False):
        return  # a worker process runs one app: patched once
    build = Recovery._build_highwaters

    async def build_highwaters(
        self: Recovery, consumer: Any, tps: Any, destination: Counter[Any], title: str
    ) -> None:
        await build(self, consumer, tps, destination, title)
        # Faust keeps the last offset (end - 1), and -1 for an empty partition.
        listed = {tp: destination[tp] + 1 for tp in tps if tp in destination}
        ends = await fetched_ends(kafka, listed)
        for tp, end in ends.items():
            destination[tp] = end - 1  # assigned: Counter.update would add

    build_highwaters.checks_ends = True  # type: ignore[attr-defined]
    Recovery._build_highwaters = build_highwaters  # type: ignore[method-assign]
