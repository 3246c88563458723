"""Batches sent to Klaviyo but not yet acknowledged to Kafka, committed strictly in fetch order.

A batch is committed once all of it is settled, bulk profile jobs included. Bulk jobs take
Klaviyo seconds or more, so the consumer does not wait for them: it sends the next batches
meanwhile, up to `depth` unsettled ones, which bounds memory (depth x batch size records).
Offsets only move past a batch once every batch before it settled. Settled batches behind an
unsettled one (an account waiting out an auth pause holds its batch) keep only their offsets and
do not count against `depth`, up to `HELD_MAX`, which bounds the redelivery after a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiokafka import TopicPartition

log = logging.getLogger(__name__)

Commit = Callable[[dict[TopicPartition, int]], Awaitable[None]]
HELD_MAX = 256  # batches not yet committed, settled or not


@dataclass
class _Batch:
    offsets: dict[TopicPartition, int]
    settled: asyncio.Future[None]


class Pipeline:
    def __init__(self, commit: Commit, depth: int = 4) -> None:
        self._commit = commit
        self.depth = depth
        self._batches: deque[_Batch] = deque()
        self._lock = asyncio.Lock()

    def __len__(self) -> int:
        return len(self._batches)

    @property
    def full(self) -> bool:
        unsettled = sum(1 for batch in self._batches if not batch.settled.done())
        return unsettled >= self.depth or len(self._batches) >= max(self.depth, HELD_MAX)

    def add(self, offsets: dict[TopicPartition, int], settled: asyncio.Future[None]) -> None:
        self._batches.append(_Batch(offsets, settled))

    async def wait_head(self) -> None:
        """Until the oldest batch, or any other unsettled one (which may make room), settles."""
        pending = [batch.settled for batch in self._batches if not batch.settled.done()]
        if pending:
            await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)

    async def commit_settled(self) -> None:
        """Commit the settled prefix. A batch that failed (a bug, not Klaviyo) re-raises here."""
        async with self._lock:
            offsets: dict[TopicPartition, int] = {}
            while self._batches and self._batches[0].settled.done():
                batch = self._batches.popleft()
                if not batch.settled.cancelled():
                    batch.settled.result()
                offsets.update(batch.offsets)
            if offsets:
                await self._commit(offsets)

    async def drain(self, within: float) -> None:
        """On revocation: give the settling batches (bulk jobs Klaviyo already accepted) until
        `within` to finish, commit what did, drop the rest for the next owner to redeliver.

        Waiting matters: a job still queued at Klaviyo could otherwise land after the next
        owner's newer write for the same customer. The group waits for us meanwhile.
        """
        deadline = time.monotonic() + within
        pending = [batch.settled for batch in self._batches if not batch.settled.done()]
        if pending:
            await asyncio.wait(pending, timeout=max(0.0, deadline - time.monotonic()))
        with contextlib.suppress(Exception):
            await self.commit_settled()
        dropped = len(self._batches)
        async with self._lock:
            for batch in self._batches:
                batch.settled.cancel()
            self._batches.clear()
        if dropped:
            log.warning("sync batches dropped on revocation count=%d: redelivered by the next owner",
                        dropped)

    def cancel_all(self) -> None:
        for batch in self._batches:
            batch.settled.cancel()
        self._batches.clear()
