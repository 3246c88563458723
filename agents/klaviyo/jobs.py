"""Bulk profile import jobs: polled until Klaviyo has applied them, then their import errors read.

A job is polled by one task however many batches wait on it, with a growing interval, so polling
stays well inside the job endpoints' 150/m while a fresh job is still noticed within a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

from agents.klaviyo.client import KlaviyoClient, KlaviyoRejected

log = logging.getLogger(__name__)

FIRST_POLL_SECONDS = 0.5
MAX_POLL_SECONDS = 5.0
FINISHED = frozenset({"complete", "cancelled"})


@dataclass(frozen=True)
class JobResult:
    job_id: str
    status: str  # complete, cancelled, or unknown (Klaviyo no longer knows the job)
    rows: list[dict[str, Any]] = field(default_factory=list)
    """import-error resources: {type, id, attributes: {code, title, detail, source, original_payload}}"""


class JobTracker:
    def __init__(
        self,
        client: KlaviyoClient,
        *,
        first_poll: float = FIRST_POLL_SECONDS,
        max_poll: float = MAX_POLL_SECONDS,
    ) -> None:
        self._client = client
        self._first_poll = first_poll
        self._max_poll = max_poll
        self._tasks: dict[str, asyncio.Task[JobResult]] = {}

    @property
    def pending(self) -> int:
        return len(self._tasks)

    async def result(self, job_id: str) -> JobResult:
        """Wait for the job to finish. A cancelled waiter leaves the polling to the others."""
        task = self._tasks.get(job_id)
        if task is None:
            task = self._tasks[job_id] = asyncio.create_task(self._poll(job_id))
            task.add_done_callback(lambda _: self._tasks.pop(job_id, None))
        return await asyncio.shield(task)

    async def aclose(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _poll(self, job_id: str) -> JobResult:
        delay = self._first_poll
        while True:
            await asyncio.sleep(delay)
            try:
                attributes = await self._client.import_job(job_id)
            except KlaviyoRejected as exc:
                # 404: expired or never ours. Nothing of it can still land, which is all a wait needs.
                log.warning("bulk import job unknown job=%s status=%s", job_id, exc.status)
                return JobResult(job_id, "unknown")
            status = str(attributes.get("status"))
            if status in FINISHED:
                rows = await self._client.import_errors(job_id) if attributes.get("failed_count") else []
                log.info("bulk import job finished job=%s status=%s failed=%d", job_id, status, len(rows))
                return JobResult(job_id, status, rows)
            delay = min(self._max_poll, delay * 1.5)
