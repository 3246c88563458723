"""The sync agent: sync records -> Klaviyo, in batches, after the state agent.

A batch is acknowledged only after Klaviyo accepted it (or a permanent error was dead-lettered),
so a crash redelivers it: at-least-once, made harmless by idempotent writes.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from agents import metrics
from agents.app import Runtime
from agents.klaviyo.client import KlaviyoClient
from agents.klaviyo.delivery import Delivery
from streams.deadletter import dead_letter
from streams.errors import Reason, Stage
from streams.outbox import SyncRecord, decode_sync_record

log = logging.getLogger(__name__)


def register(runtime: Runtime) -> None:
    settings = runtime.settings

    async def send_dead_letter(key: str, record: bytes) -> None:
        await runtime.deadletter.send(key=key.encode(), value=record)

    @runtime.app.agent(runtime.sync, name="klaviyo-sync")
    async def sync(stream: Any) -> AsyncIterator[None]:
        client = KlaviyoClient(
            api_key=settings.klaviyo_api_key or "",
            base_url=settings.klaviyo_base_url,
            revision=settings.klaviyo_revision,
        )
        delivery = Delivery(client, settings.projection, send_dead_letter)
        try:
            async for batch in stream.take(settings.sync_batch_size, within=settings.sync_batch_seconds):
                records: list[SyncRecord] = []
                for value in batch:
                    try:
                        records.append(decode_sync_record(value))
                    except Exception as exc:  # written by us; a bad one is a bug, kept for replay
                        log.exception("unreadable sync record")
                        metrics.DEADLETTERS.labels(Stage.SYNC.value, Reason.PROCESSING_ERROR.value).inc()
                        await runtime.deadletter.send(value=dead_letter(
                            stage=Stage.SYNC, reason=Reason.PROCESSING_ERROR, error=repr(exc),
                            original=value, at=datetime.now(UTC)))
                await delivery.deliver(records)
                if stream.current_event is not None:  # the batch's last event: take() waits for us
                    runtime.progress.record(stream.current_event.message)
                yield None
        finally:
            await client.aclose()
