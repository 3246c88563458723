"""Returns as Klaviyo custom objects (opt-in: RETURNSYNC_CUSTOM_OBJECTS), beside the profile writes.

Per account, one data source titled `RETURNSYNC_CUSTOM_OBJECTS_TITLE`: looked up by title the
first time a worker needs it (so a restart finds it again), created only when absent; two
workers creating it at once get one 201 and one 409, and the loser reads the winner's.

Per batch, the delivery engine hands over the deliveries its version floor admitted (never a
state older than one already written for that customer); each gives the records of the returns
its events touched (streams/return_records.py), made from the customer's newest state in the
batch, so the record written is always the latest state of its return. A return not touched
again is not rewritten: its last record stands.

The engine's pieces do the rest: the client's rate budgets, retries and auth pause; singles
while the record endpoint's budget lets them out now (latency), 500-record bulk requests within
4 MB when it does not (a backlog); a refused bulk request is split until the culprit stands
alone, and each refused record is dead-lettered once (per return and state version) with
Klaviyo's detail. Klaviyo answers both record endpoints 204 with no job to follow, so a bulk
request's records cannot be awaited: a later single write of the same return could in principle
be applied first (see README, Returns as custom objects).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from agents import metrics
from agents.klaviyo import rejections
from agents.klaviyo.bodies import (
    data_source_body,
    data_source_record_body,
    data_source_record_item,
    data_source_records_body,
    encode,
)
from agents.klaviyo.client import KlaviyoClient, KlaviyoRejected
from agents.klaviyo.plan import chunked
from streams.outbox import CustomerDelivery, SyncRecord
from streams.reducer import Applied
from streams.return_records import ObjectRecord, all_return_records, return_records
from streams.state import CustomerState

log = logging.getLogger(__name__)

SINGLE = "data-source-record-create-jobs"
BULK = "data-source-record-bulk-create-jobs"
BULK_RECORDS_MAX = 500
PAYLOAD_MAX = 4_000_000  # decimal: the stricter reading of "4 MB"
_ENVELOPE = len(encode(data_source_records_body("0" * 26, []))) + 1_000
_RECORD_ITEM = re.compile(r"^/data/attributes/data-source-records/data/(\d+)(?:/|$)")

Refused = Callable[..., Awaitable[None]]
"""(customer_key, rejection, request, errors, version=...) -> dead-lettered (Delivery._rejected)."""


class HasClient(Protocol):
    """A channel (agents/klaviyo/channels.py): one account's client."""

    @property
    def client(self) -> KlaviyoClient: ...


@dataclass(frozen=True, slots=True)
class RecordWrite:
    record: ObjectRecord
    item: dict[str, Any]
    size: int  # in a bulk request, its separating comma included

    @property
    def refusal_key(self) -> tuple[str, str, int]:
        return ("record", self.record.key, self.record.version)


@dataclass(frozen=True, slots=True)
class RecordPlan:
    singles: list[RecordWrite]
    chunks: list[list[RecordWrite]]
    refused: list[RecordWrite]  # larger than any request Klaviyo takes: never sent


def touched_records(delivery: CustomerDelivery) -> list[ObjectRecord]:
    """The records of the returns this delivery's events touched, from its newest state."""
    newest = max(delivery.records, key=lambda record: record.state.version)
    return return_records(newest.state, _touched(delivery.records))


def state_records(states: Iterable[CustomerState]) -> list[ObjectRecord]:
    """Every kept return of each state: what a replay's rebuild or a repair writes."""
    return [record for state in states for record in all_return_records(state)]


def record_writes(records: Iterable[ObjectRecord]) -> list[RecordWrite]:
    writes = []
    for record in records:
        item = data_source_record_item(record.record)
        writes.append(RecordWrite(record, item, len(encode(item)) + 1))
    return writes


def plan_records(writes: Sequence[RecordWrite], capacity: int) -> RecordPlan:
    """Singles while the single endpoint's budget lets them all out now, else bulk chunks."""
    refused = [write for write in writes if write.size + _ENVELOPE > PAYLOAD_MAX]
    fit = [write for write in writes if write.size + _ENVELOPE <= PAYLOAD_MAX]
    if len(fit) <= capacity:
        return RecordPlan(fit, [], refused)
    chunks = chunked(fit, most=BULK_RECORDS_MAX, payload_max=PAYLOAD_MAX, overhead=_ENVELOPE)
    return RecordPlan([], chunks, refused)


class DataSources:
    """Per account (client), the id of the data source titled `title`: found, or created once."""

    def __init__(self, title: str) -> None:
        self.title = title
        self._ids: dict[int, str] = {}
        self._locks: dict[int, asyncio.Lock] = {}

    async def id_for(self, client: KlaviyoClient) -> str:
        account = id(client)
        found = self._ids.get(account)
        if found is not None:
            return found
        async with self._locks.setdefault(account, asyncio.Lock()):
            if account not in self._ids:
                self._ids[account] = await self._find_or_create(client)
            return self._ids[account]

    async def _find_or_create(self, client: KlaviyoClient) -> str:
        existing = await self._find(client)
        if existing is not None:
            log.info("custom objects: data source found id=%s", existing)
            return existing
        try:
            created = await client.create_data_source(data_source_body(self.title))
        except KlaviyoRejected as exc:
            again = await self._find(client) if exc.status == 409 else None
            if again is None:
                raise
            return again  # another worker created it meanwhile
        log.info("custom objects: data source created id=%s", created["id"])
        return str(created["id"])

    async def _find(self, client: KlaviyoClient) -> str | None:
        for source in await client.data_sources():
            if (source.get("attributes") or {}).get("title") == self.title:
                return str(source["id"])
        return None


class ReturnObjects:
    """Writes return records for the delivery engine (agents/klaviyo/delivery.py)."""

    def __init__(
        self, title: str, refused: Refused, known: rejections.Known, *, rebuild: bool = False
    ) -> None:
        """`rebuild` (a replay): a delivery writes every return its newest state holds, not only
        those its events touched: a replay sends a customer's final state once, with its first
        record, and the later records, older by the floor, write nothing."""
        self.sources = DataSources(title)
        self._refused = refused
        self.known = known
        self.rebuild = rebuild

    def records_of(self, delivery: CustomerDelivery) -> list[ObjectRecord]:
        if self.rebuild:
            return all_return_records(max(delivery.records, key=lambda record: record.state.version).state)
        return touched_records(delivery)

    async def write_deliveries(self, channel: HasClient, deliveries: Sequence[CustomerDelivery]) -> None:
        for delivery in deliveries:
            if any(record.applied is Applied.DUPLICATE for record in delivery.records):
                # Handed on again on purpose (a re-drive): a refused record is tried again.
                for record in self.records_of(delivery):
                    self.known.forget_event(("record", record.key, record.version))
        await self.write(channel, [record for delivery in deliveries for record in self.records_of(delivery)])

    async def write(self, channel: HasClient, records: Sequence[ObjectRecord]) -> None:
        known = self.known
        writes = [write for write in record_writes(records) if not known.event_refused(write.refusal_key)]
        if not writes:
            return
        client = channel.client
        try:
            source_id = await self.sources.id_for(client)
        except KlaviyoRejected as exc:
            log.error("custom objects: no data source (records dead-lettered): status=%s detail=%s",
                      exc.status, exc.detail)
            for write in writes:
                await self._refuse(write, exc, None)
            return
        plan = plan_records(writes, client.budgets.available(SINGLE))
        for write in plan.refused:
            await self._refuse(write, rejections.too_large(f"record of {write.size:,} bytes exceeds "
                                                           f"Klaviyo's 4 MB per request"), None)
        await asyncio.gather(*(self._single(client, source_id, write) for write in plan.singles),
                             *(self._bulk(client, source_id, chunk) for chunk in plan.chunks))

    async def _single(self, client: KlaviyoClient, source_id: str, write: RecordWrite) -> None:
        metrics.KLAVIYO_BATCH_SIZE.labels(SINGLE).observe(1)
        try:
            await client.create_data_source_record(data_source_record_body(source_id, write.item))
        except KlaviyoRejected as exc:
            await self._refuse(write, exc, None)

    async def _bulk(self, client: KlaviyoClient, source_id: str, chunk: list[RecordWrite]) -> None:
        metrics.KLAVIYO_BATCH_SIZE.labels(BULK).observe(len(chunk))
        try:
            await client.bulk_create_data_source_records(
                data_source_records_body(source_id, [write.item for write in chunk]))
        except KlaviyoRejected as exc:
            await self._split(client, source_id, chunk, exc)

    async def _split(
        self, client: KlaviyoClient, source_id: str, chunk: list[RecordWrite], exc: KlaviyoRejected
    ) -> None:
        """Records pointed at are refused and the rest resent; else halve, then singles."""
        pointed = _pointed(exc, len(chunk))
        if pointed:
            for index, errors in pointed.items():
                await self._refuse(chunk[index], exc, errors)
            rest = [write for index, write in enumerate(chunk) if index not in pointed]
            if rest:
                await self._bulk(client, source_id, rest)
        elif len(chunk) <= rejections.SINGLE_FALLBACK:
            await asyncio.gather(*(self._single(client, source_id, write) for write in chunk))
        else:
            half = len(chunk) // 2
            await asyncio.gather(self._bulk(client, source_id, chunk[:half]),
                                 self._bulk(client, source_id, chunk[half:]))

    async def _refuse(
        self, write: RecordWrite, exc: KlaviyoRejected, errors: rejections.Errors | None
    ) -> None:
        """One dead letter per return and state version: the same record refused again writes none."""
        if self.known.refuse_event(write.refusal_key):
            record = write.record
            await self._refused(record.customer_key, exc, write.item, errors, version=record.version)


def _touched(records: Iterable[SyncRecord]) -> set[str]:
    return {record.event.return_id for record in records if record.event.return_id}


def _pointed(rejection: KlaviyoRejected, count: int) -> dict[int, rejections.Errors]:
    found: dict[int, rejections.Errors] = {}
    for error in rejection.errors:
        match = _RECORD_ITEM.match(str((error.get("source") or {}).get("pointer") or ""))
        if match is None or int(match.group(1)) >= count:
            return {}
        found.setdefault(int(match.group(1)), []).append(error)
    return found
