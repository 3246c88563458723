"""Batches sent to Klaviyo but not yet acknowledged to Kafka, committed strictly in fetch order.

A batch is committed once all of it is settled, bulk profile jobs included. Bulk jobs take
Klaviyo seconds or more, so the consumer does not wait for them: it sends the next batches
meanwhile, up to `depth` unsettled ones, which bounds memory (depth x batch size records) and
the redelivery after a crash. Offsets only move past a batch once every batch before it settled.
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
        return len(self._batches) >= self.depth

    def add(self, offsets: dict[TopicPartition, int], settled: asyncio.Future[None]) -> None:
        self._batches.append(_Batch(offsets, settled))

    async def wait_head(self) -> None:
        if self._batches:
            await asyncio.wait([self._batches[0].settled])

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
