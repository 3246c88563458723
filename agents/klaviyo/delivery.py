"""Deliver a batch of sync records to Klaviyo: coalesced, version-guarded, planned, sent.

Per batch: coalesce to one profile write per customer (newest version) plus new timeline
events; drop profile writes older than the customer's floor (versions.py); wait for a pending
bulk job of the same customer; record the versions about to be written; then plan single or
bulk requests per account from its rate budget (plan.py) and send them concurrently.

`submit` returns once every request has an answer except bulk profile imports, which Klaviyo
applies later; the future it returns completes when those jobs have finished and their import
errors are dead-lettered. A permanent rejection dead-letters only the refused items (bulk
requests are split until the culprit stands alone); 401/403 pause the account in the client.

A refusal is about one profile state or one event, and costs the others nothing: an item too
large for Klaviyo is refused before sending (plan.py); what was refused is remembered
(rejections.Known), so a redelivery or a later batch carrying the same state sends nothing and
writes no second dead letter; a customer's refused events of one batch make one dead letter.

A paused account holds up only itself: `submit` returns once every other account of the batch
has its answers, and the paused account's part joins the settling future (the batch is committed
after the account caught up). The account's parts of later batches run after it, in order, so a
newer write of a customer never overtakes an older one waiting out the pause.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from agents import metrics
from agents.klaviyo import rejections
from agents.klaviyo.bodies import event_body
from agents.klaviyo.channels import Channel, Channels
from agents.klaviyo.client import KlaviyoRejected
from agents.klaviyo.custom_objects import ReturnObjects
from agents.klaviyo.plan import (
    EventWrite,
    Plan,
    ProfileWrite,
    bulk_events_request,
    bulk_profiles_request,
    event_entries,
    event_writes,
    plan_events,
    plan_profiles,
    profile_writes,
)
from agents.klaviyo.versions import Floor, MemoryVersions, VersionStore
from streams.errors import Reason, Stage
from streams.events import customer_ref
from streams.outbox import CustomerDelivery, SyncRecord, admit, coalesce, timeline_events
from streams.projection import KlaviyoEvent, ProjectionConfig
from streams.reducer import Applied

log = logging.getLogger(__name__)

DeadLetterSink = Callable[[str, bytes], Awaitable[None]]
"""(key, dead-letter record) -> written to returns.deadletter."""


class Delivery:
    def __init__(
        self,
        channels: Channels,
        config: ProjectionConfig,
        dead_letters: DeadLetterSink,
        versions: VersionStore | None = None,
        custom_objects_title: str | None = None,
        rebuild_records: bool = False,
    ) -> None:
        """`custom_objects_title`: also keep one custom-object record per return, in the data
        source of that title (agents/klaviyo/custom_objects.py); None writes none.
        `rebuild_records` (replay): write all of a customer's returns with its newest state."""
        self.channels = channels
        self.config = config
        self.dead_letters = dead_letters
        self.versions: VersionStore = versions if versions is not None else MemoryVersions()
        self.known = rejections.Known()
        self.objects = None if custom_objects_title is None else ReturnObjects(
            custom_objects_title, self._rejected, self.known, rebuild=rebuild_records)
        # Bulk imports between "Klaviyo accepted" and "job id recorded": a cancelled batch must
        # not leave a job running that no floor knows about, so these run to the end (shielded).
        self._recording_jobs: set[asyncio.Future[str]] = set()
        # Each account's part of the latest batch, while it runs: the next batch's part waits for it.
        self._latest: dict[Channel, asyncio.Future[None]] = {}

    async def deliver(self, records: Sequence[SyncRecord]) -> None:
        await (await self.submit(records))

    async def quiesce(self, within: float | None = None) -> None:
        """After cancelling a batch: wait until every bulk job Klaviyo accepted has its id recorded."""
        if self._recording_jobs:
            await asyncio.wait(list(self._recording_jobs), timeout=within)

    async def submit(self, records: Sequence[SyncRecord]) -> asyncio.Future[None]:
        metrics.SYNC_BACKLOG.inc(len(records))
        settling: list[asyncio.Future[None]] = []
        sending: dict[Channel, asyncio.Future[None]] = {}
        try:
            groups: dict[Channel, list[CustomerDelivery]] = {}
            for delivery in coalesce(records, self.config):
                groups.setdefault(self.channels.for_tenant(delivery.tenant), []).append(delivery)
            for channel, group in groups.items():
                sending[channel] = self._send_in_order(channel, group, settling)
            await _sent_or_paused(sending)
        except BaseException:
            for task in [*sending.values(), *settling]:
                task.cancel()
            metrics.SYNC_BACKLOG.dec(len(records))
            raise
        # Paused accounts: their part settles with the batch, once the key works again.
        settling.extend(task for task in sending.values() if not task.done())
        # Only what the metrics need outlives the send: a hot customer's records carry large states.
        done = [_Delivered(r.event.source, r.event.type.value, r.event.occurred_at, r.ingested_at)
                for r in records]
        finished = asyncio.ensure_future(self._finish(done, settling))
        # A callback, not a finally: a batch dropped on revocation may be cancelled before it runs.
        finished.add_done_callback(lambda _: metrics.SYNC_BACKLOG.dec(len(records)))
        return finished

    async def _finish(self, records: Sequence[_Delivered], settling: list[asyncio.Future[None]]) -> None:
        # A paused account's part still adds its bulk jobs here once it is sent.
        waited = 0
        while waited < len(settling):
            waited = len(settling)
            await asyncio.gather(*settling)
        now = datetime.now(UTC)
        for record in records:
            metrics.EVENTS_DELIVERED.labels(record.source, record.type).inc()
            metrics.SYNC_LATENCY_SECONDS.labels("occurred").observe(
                max(0.0, (now - record.occurred_at).total_seconds()))
            metrics.SYNC_LATENCY_SECONDS.labels("ingested").observe(
                max(0.0, (now - record.ingested_at).total_seconds()))

    def _send_in_order(
        self, channel: Channel, deliveries: list[CustomerDelivery], settling: list[asyncio.Future[None]]
    ) -> asyncio.Future[None]:
        before = self._latest.get(channel)

        async def send() -> None:
            if before is not None and not before.done():
                await asyncio.wait([before])  # its outcome belongs to its own batch
            await self._send_account(channel, deliveries, settling)

        task = asyncio.ensure_future(send())
        self._latest[channel] = task

        def forget(done: asyncio.Future[None]) -> None:
            if self._latest.get(channel) is done:
                del self._latest[channel]

        task.add_done_callback(forget)
        return task

    async def _send_account(
        self, channel: Channel, deliveries: list[CustomerDelivery], settling: list[asyncio.Future[None]]
    ) -> None:
        self._try_again_if_resent(deliveries)
        fresh, stale = admit(deliveries, self._floor_version)
        if stale:
            log.info("stale profile writes skipped account=%s count=%d (a newer version was written)",
                     channel.name, len(stale))
        ready: list[CustomerDelivery] = []
        fenced: dict[str, list[CustomerDelivery]] = {}
        for delivery in fresh:
            floor = self.versions.floor(delivery.customer_key)
            if floor is not None and floor.job is not None and not self.versions.job_complete(floor.job):
                fenced.setdefault(floor.job, []).append(delivery)
            else:
                ready.append(delivery)

        async def after_job(job_id: str, group: list[CustomerDelivery]) -> None:
            # Klaviyo applies bulk jobs asynchronously: a newer write must not overtake one.
            await self._job_finished(channel, job_id)
            await self._write_profiles(channel, profile_writes(group), settling)

        await asyncio.gather(
            self._write_profiles(channel, profile_writes(ready), settling),
            self._write_events(channel, event_writes(deliveries)),
            *(after_job(job_id, group) for job_id, group in fenced.items()),
            # Admitted by the same floor as the profiles: never a record from an older state.
            *([self.objects.write_deliveries(channel, fresh)] if self.objects is not None else []),
        )

    def _try_again_if_resent(self, deliveries: Sequence[CustomerDelivery]) -> None:
        """A duplicate event hands its customer's state (and its own timeline events) on again on
        purpose: a re-drive after the cause of a refusal was fixed. Those are tried again."""
        for delivery in deliveries:
            for record in delivery.records:
                if record.applied is Applied.DUPLICATE:
                    self.known.forget_profile(delivery.customer_key, record.state.version)
                    for event in timeline_events(record, self.config):
                        self.known.forget_event(_event_key_of(event))

    def _floor_version(self, customer_key: str) -> int:
        floor = self.versions.floor(customer_key)
        return floor.version if floor is not None else 0

    async def _job_finished(self, channel: Channel, job_id: str) -> None:
        await channel.jobs.result(job_id)
        await self.versions.completed(job_id, ())

    # --- profiles ----------------------------------------------------------------------------

    async def _write_profiles(
        self, channel: Channel, writes: list[ProfileWrite], settling: list[asyncio.Future[None]]
    ) -> None:
        # A state Klaviyo refused already: sending it again would only be refused again.
        known = self.known
        writes = [write for write in writes if not known.profile_refused(write.customer_key, write.version)]
        if not writes:
            return
        plan = plan_profiles(writes, channel.client.budgets.available("profile-import"))
        for write in plan.refused:
            await self._profile_refused(write, rejections.too_large(str(write.too_large)), write.single)
        sending = [*plan.singles, *(write for chunk in plan.chunks for write in chunk)]
        if not sending:
            return
        # Recorded before anything is sent: a crash after sending must not let an older record
        # of the same customer, redelivered on its own, go out after this one.
        await self.versions.record([(write.customer_key, Floor(write.version)) for write in sending])
        await asyncio.gather(*(self._single_profile(channel, write) for write in plan.singles),
                             *(self._bulk_profiles(channel, chunk, settling) for chunk in plan.chunks))

    async def _single_profile(self, channel: Channel, write: ProfileWrite) -> None:
        metrics.KLAVIYO_BATCH_SIZE.labels("profile-import").observe(1)
        try:
            await channel.client.import_profile(write.single)
        except KlaviyoRejected as exc:
            await self._profile_refused(write, exc, write.single)

    async def _bulk_profiles(
        self, channel: Channel, chunk: list[ProfileWrite], settling: list[asyncio.Future[None]]
    ) -> None:
        metrics.KLAVIYO_BATCH_SIZE.labels("profile-bulk-import-jobs").observe(len(chunk))
        given_up = asyncio.Event()
        recording = asyncio.ensure_future(self._import_and_record(channel, chunk, given_up))
        self._recording_jobs.add(recording)
        recording.add_done_callback(self._recording_jobs.discard)
        recording.add_done_callback(_retrieved)
        try:
            job_id = await asyncio.shield(recording)
        except asyncio.CancelledError:
            # Shielded so that a job Klaviyo accepted gets its id recorded; but one still waiting
            # for its turn (budget, Retry-After) must never go out now: sent after the next
            # owner's newer write, Klaviyo would apply this older state over it.
            given_up.set()
            raise
        except KlaviyoRejected as exc:
            await self._split_profiles(channel, chunk, exc, settling)
            return
        settling.append(asyncio.ensure_future(self._settle_job(channel, job_id, chunk)))

    async def _import_and_record(
        self, channel: Channel, chunk: list[ProfileWrite], given_up: asyncio.Event
    ) -> str:
        job_id = await channel.client.bulk_import_profiles(bulk_profiles_request(chunk),
                                                           wanted=lambda: not given_up.is_set())
        await self.versions.record([(write.customer_key, Floor(write.version, job_id)) for write in chunk])
        return job_id

    async def _split_profiles(
        self, channel: Channel, chunk: list[ProfileWrite], exc: KlaviyoRejected,
        settling: list[asyncio.Future[None]],
    ) -> None:
        pointed = rejections.pointed_profiles(exc, len(chunk))
        if pointed:
            for index, errors in pointed.items():
                await self._profile_refused(chunk[index], exc, chunk[index].item, errors)
            rest = [write for index, write in enumerate(chunk) if index not in pointed]
            if rest:
                await self._bulk_profiles(channel, rest, settling)
        elif len(chunk) <= rejections.SINGLE_FALLBACK:
            await asyncio.gather(*(self._single_profile(channel, write) for write in chunk))
        else:
            half = len(chunk) // 2
            await asyncio.gather(self._bulk_profiles(channel, chunk[:half], settling),
                                 self._bulk_profiles(channel, chunk[half:], settling))

    async def _settle_job(self, channel: Channel, job_id: str, chunk: list[ProfileWrite]) -> None:
        result = await channel.jobs.result(job_id)
        await self.versions.completed(job_id, [write.customer_key for write in chunk])
        by_email = {write.email.lower(): write for write in chunk}
        for row in result.rows:
            index = rejections.row_index(row)
            write = chunk[index] if index is not None and index < len(chunk) else by_email.get(
                rejections.row_email(row) or "")
            key = write.customer_key if write is not None else ""
            if write is not None and not self.known.refuse_profile(write.customer_key, write.version):
                continue  # this state's refusal is dead-lettered already
            log.warning("klaviyo import error job=%s customer=%s code=%s", job_id, customer_ref(key),
                        (row.get("attributes") or {}).get("code"), extra={"customer": customer_ref(key)})
            metrics.DEADLETTERS.labels(Stage.SYNC.value, Reason.KLAVIYO_IMPORT_ERROR.value).inc()
            await self.dead_letters(key, rejections.import_error_record(row))
        if result.status == "cancelled":
            log.error("bulk import job cancelled job=%s profiles=%d: their writes go to the dead-letter "
                      "topic for replay", job_id, len(chunk))
            failed = {rejections.row_index(row) for row in result.rows}
            for index, write in enumerate(chunk):
                if index not in failed:
                    cancelled = KlaviyoRejected(None, f"bulk import job {job_id} was cancelled")
                    await self._rejected(write.customer_key, cancelled, write.item, version=write.version)

    # --- events ------------------------------------------------------------------------------

    async def _write_events(self, channel: Channel, writes: list[EventWrite]) -> None:
        writes = [write for write in writes if not self.known.event_refused(_event_key(write))]
        budgets = channel.client.budgets
        plan = plan_events(writes, budgets.available("events"), budgets.available("event-bulk-create-jobs"))
        await self._events_refused(plan.refused)
        await self._send_events(channel, plan)

    async def _send_events(self, channel: Channel, plan: Plan[EventWrite]) -> None:
        refused: list[tuple[EventWrite, KlaviyoRejected, rejections.Errors | None]] = []
        await asyncio.gather(*(self._single_event(channel, write, refused) for write in plan.singles),
                             *(self._bulk_events(channel, chunk, refused) for chunk in plan.chunks))
        await self._events_refused_by(refused)

    async def _single_event(
        self, channel: Channel, write: EventWrite,
        refused: list[tuple[EventWrite, KlaviyoRejected, rejections.Errors | None]],
    ) -> None:
        metrics.KLAVIYO_BATCH_SIZE.labels("events").observe(1)
        try:
            await channel.client.create_event(event_body(write.event))
        except KlaviyoRejected as exc:
            refused.append((write, exc, None))

    async def _bulk_events(
        self, channel: Channel, chunk: list[EventWrite],
        refused: list[tuple[EventWrite, KlaviyoRejected, rejections.Errors | None]],
    ) -> None:
        metrics.KLAVIYO_BATCH_SIZE.labels("event-bulk-create-jobs").observe(len(chunk))
        entries = event_entries(chunk)
        try:
            await channel.client.bulk_create_events(bulk_events_request(entries))
        except KlaviyoRejected as exc:
            await self._split_events(channel, entries, exc, refused)

    async def _split_events(
        self, channel: Channel, entries: list[list[EventWrite]], exc: KlaviyoRejected,
        refused: list[tuple[EventWrite, KlaviyoRejected, rejections.Errors | None]],
    ) -> None:
        """Items pointed at are refused and the rest resent; an unpointed refusal is halved by
        profile (entry), and a request of one profile refused whole refuses that profile's
        events: never one request per event, which would spend the budget others need."""
        pointed = rejections.pointed_events(exc, entries)
        if pointed:
            for (entry, index), errors in pointed.items():
                refused.append((entries[entry][index], exc, errors))
            bad = {id(entries[entry][index]) for entry, index in pointed}
            rest = [write for entry in entries for write in entry if id(write) not in bad]
            if rest:
                await self._bulk_events(channel, rest, refused)
        elif len(entries) == 1:
            refused.extend((write, exc, None) for write in entries[0])
        else:
            parts = ([[entry] for entry in entries] if len(entries) <= rejections.SINGLE_FALLBACK
                     else [entries[: len(entries) // 2], entries[len(entries) // 2:]])
            await asyncio.gather(*(self._bulk_events(channel, [w for entry in part for w in entry], refused)
                                   for part in parts))

    # --- dead letters ------------------------------------------------------------------------

    async def _profile_refused(
        self, write: ProfileWrite, exc: KlaviyoRejected, request: object,
        errors: rejections.Errors | None = None,
    ) -> None:
        """One dead letter per profile state: the same state refused again writes none."""
        if self.known.refuse_profile(write.customer_key, write.version):
            await self._rejected(write.customer_key, exc, request, errors, version=write.version)

    async def _events_refused(self, writes: Sequence[EventWrite]) -> None:
        await self._events_refused_by([(write, rejections.too_large(str(write.too_large)), None)
                                       for write in writes])

    async def _events_refused_by(
        self, refused: Sequence[tuple[EventWrite, KlaviyoRejected, rejections.Errors | None]],
    ) -> None:
        """One dead letter per customer and batch, listing its events refused for the first time."""
        by_customer: dict[str, list[tuple[EventWrite, KlaviyoRejected, rejections.Errors | None]]] = {}
        for write, exc, errors in refused:
            if self.known.refuse_event(_event_key(write)):
                by_customer.setdefault(write.customer_key, []).append((write, exc, errors))
        for customer_key, items in by_customer.items():
            first = items[0][1]
            errors = [error for _, exc, errs in items for error in (errs if errs is not None else exc.errors)]
            request: object = (event_body(items[0][0].event) if len(items) == 1
                               else [event_body(write.event) for write, _, _ in items])
            await self._rejected(customer_key, first, request, errors)

    async def _rejected(
        self, customer_key: str, exc: KlaviyoRejected, request: object,
        errors: rejections.Errors | None = None, *, version: int | None = None,
    ) -> None:
        log.warning("klaviyo rejected status=%s customer=%s detail=%s",
                    exc.status, customer_ref(customer_key), exc.detail,
                    extra={"status": exc.status, "customer": customer_ref(customer_key)})
        metrics.DEADLETTERS.labels(Stage.SYNC.value, Reason.KLAVIYO_REJECTED.value).inc()
        record = rejections.rejected_record(exc, request, errors, version=version)
        await self.dead_letters(customer_key, record)


@dataclass(frozen=True, slots=True)
class _Delivered:
    """What the delivered-events metrics need of one sync record."""

    source: str
    type: str
    occurred_at: datetime
    ingested_at: datetime


def _event_key(write: EventWrite) -> tuple[str, str, str]:
    return _event_key_of(write.event)


def _event_key_of(event: KlaviyoEvent) -> tuple[str, str, str]:
    """One Klaviyo event: the same email, metric and unique_id (plan.event_writes dedupes by it)."""
    return (event.email.strip().lower(), event.metric, event.unique_id)


def _retrieved(task: asyncio.Future[str]) -> None:
    """A recording nobody awaits any more (its batch was given up) still has its outcome read."""
    if not task.cancelled():
        task.exception()


async def _sent_or_paused(sending: dict[Channel, asyncio.Future[None]]) -> None:
    """Until every account's part is done or waits out an auth pause; the first failure raises."""
    while True:
        for task in sending.values():
            error = task.exception() if task.done() and not task.cancelled() else None
            if error is not None:
                raise error
        running = {channel: task for channel, task in sending.items()
                   if not task.done() and not channel.client.auth.paused}
        if not running:
            return
        pauses = [asyncio.ensure_future(channel.client.auth.wait_closed()) for channel in running]
        try:
            await asyncio.wait([*running.values(), *pauses], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pause in pauses:
                pause.cancel()
