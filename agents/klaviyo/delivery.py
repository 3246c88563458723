"""Deliver a batch of sync records to Klaviyo: coalesced per customer, concurrent across them.

A permanent rejection dead-letters that one request with Klaviyo's detail and the rest goes on.
401/403 pause delivery (the batch stays unacknowledged) and raise an alert metric, instead of
burning the backlog into the dead-letter topic with a key that will work again once fixed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from agents import metrics
from agents.klaviyo.bodies import event_body, profile_import_body
from agents.klaviyo.client import KlaviyoAuthFailed, KlaviyoClient, KlaviyoRejected
from streams.deadletter import dead_letter
from streams.errors import Reason, Stage
from streams.events import customer_ref
from streams.outbox import CustomerDelivery, SyncRecord, coalesce
from streams.projection import ProjectionConfig

log = logging.getLogger(__name__)

DeadLetterSink = Callable[[str, bytes], Awaitable[None]]
"""(key, dead-letter record) -> written to returns.deadletter."""

AUTH_PAUSE_SECONDS = 30.0


class Delivery:
    def __init__(
        self,
        client: KlaviyoClient,
        config: ProjectionConfig,
        dead_letters: DeadLetterSink,
        *,
        concurrency: int = 16,
        auth_pause_seconds: float = AUTH_PAUSE_SECONDS,
    ) -> None:
        self.client = client
        self.config = config
        self.dead_letters = dead_letters
        self.auth_pause_seconds = auth_pause_seconds
        self._slots = asyncio.Semaphore(concurrency)

    async def deliver(self, records: Sequence[SyncRecord]) -> None:
        metrics.SYNC_BACKLOG.inc(len(records))
        try:
            deliveries = coalesce(records, self.config)
            await asyncio.gather(*(self._deliver_customer(delivery) for delivery in deliveries))
        finally:
            metrics.SYNC_BACKLOG.dec(len(records))

    async def _deliver_customer(self, delivery: CustomerDelivery) -> None:
        async with self._slots:
            await self._until_authorised(delivery.tenant, lambda: self._send(delivery))
        now = datetime.now(UTC)
        for record in delivery.records:
            metrics.EVENTS_DELIVERED.labels(record.event.source, record.event.type.value).inc()
            metrics.SYNC_LATENCY_SECONDS.labels("occurred").observe(
                max(0.0, (now - record.event.occurred_at).total_seconds())
            )
            metrics.SYNC_LATENCY_SECONDS.labels("ingested").observe(
                max(0.0, (now - record.ingested_at).total_seconds())
            )

    async def _send(self, delivery: CustomerDelivery) -> None:
        metrics.KLAVIYO_BATCH_SIZE.labels("profile-import").observe(1)
        await self._or_dead_letter(
            delivery, profile_import_body(delivery.profile), self.client.import_profile(delivery.profile)
        )
        for event in delivery.events:
            metrics.KLAVIYO_BATCH_SIZE.labels("events").observe(1)
            await self._or_dead_letter(delivery, event_body(event), self.client.create_event(event))

    async def _or_dead_letter(
        self, delivery: CustomerDelivery, body: dict[str, Any], request: Awaitable[None]
    ) -> None:
        try:
            await request
        except KlaviyoRejected as exc:
            log.warning(
                "klaviyo rejected status=%s customer=%s detail=%s",
                exc.status, customer_ref(delivery.customer_key), exc.detail,
            )
            metrics.DEADLETTERS.labels(Stage.SYNC.value, Reason.KLAVIYO_REJECTED.value).inc()
            error = f"klaviyo {exc.status}: {exc.detail}"
            record = dead_letter(
                stage=Stage.SYNC,
                reason=Reason.KLAVIYO_REJECTED,
                error=error,
                original={"request": body, "klaviyo_errors": exc.errors},
                at=datetime.now(UTC),
            )
            await self.dead_letters(delivery.customer_key, record)

    async def _until_authorised(self, tenant: str, attempt: Callable[[], Awaitable[None]]) -> None:
        while True:
            try:
                await attempt()
            except KlaviyoAuthFailed as exc:
                metrics.KLAVIYO_AUTH_FAILED.labels(tenant).set(1)
                log.error(
                    "klaviyo auth failed status=%s tenant=%s: delivery paused, retrying in %.0fs",
                    exc.status, tenant, self.auth_pause_seconds,
                )
                await asyncio.sleep(self.auth_pause_seconds)
                continue
            metrics.KLAVIYO_AUTH_FAILED.labels(tenant).set(0)
            return
