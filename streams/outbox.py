"""The sync record: what the state agent hands to Klaviyo delivery, and how a batch coalesces.

The state agent writes one record per processed event to an internal topic, so a slow Klaviyo
never stalls state processing and the backlog is Kafka lag, not memory. A record carries the
customer's full state after the event, so delivery can always send the latest state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from streams.events import ReturnEvent, event_from_dict, event_to_dict, format_time
from streams.projection import KlaviyoEvent, ProfileUpdate, ProjectionConfig, klaviyo_events, profile_update
from streams.reducer import Applied
from streams.state import CustomerState, state_from_dict, state_json, state_to_dict


@dataclass(frozen=True, slots=True)
class SyncRecord:
    state: CustomerState
    event: ReturnEvent
    applied: Applied
    ingested_at: datetime
    backfill: bool = False

    @property
    def customer_key(self) -> str:
        return self.state.customer_key


@dataclass(slots=True)
class CustomerDelivery:
    """One customer's share of a batch: one profile write, the new timeline events."""

    customer_key: str
    tenant: str
    profile: ProfileUpdate
    events: list[KlaviyoEvent]
    records: list[SyncRecord] = field(default_factory=list)
    version: int = 0
    """The state version `profile` was projected from: events applied to this customer."""


def encode_sync_record(record: SyncRecord) -> bytes:
    return orjson.dumps(
        {
            "state": state_to_dict(record.state),
            "event": event_to_dict(record.event),
            "applied": record.applied.value,
            "ingested_at": format_time(record.ingested_at),
            "backfill": record.backfill,
        }
    )


def decode_sync_record(data: bytes) -> SyncRecord:
    obj: dict[str, Any] = orjson.loads(data)
    return SyncRecord(
        state=state_from_dict(obj["state"]),
        event=event_from_dict(obj["event"]),
        applied=Applied(obj["applied"]),
        ingested_at=datetime.fromisoformat(obj["ingested_at"]),
        backfill=bool(obj.get("backfill", False)),
    )


def coalesce(records: Iterable[SyncRecord], config: ProjectionConfig) -> list[CustomerDelivery]:
    """Many changes to one customer become one profile write carrying the newest state.

    The newest state is the one with the highest version (events applied), never the last to
    arrive, so a redelivered older record cannot overwrite a newer one within a batch.
    """
    latest: dict[str, SyncRecord] = {}
    grouped: dict[str, list[SyncRecord]] = {}
    for record in records:
        key = record.customer_key
        grouped.setdefault(key, []).append(record)
        if key not in latest or record.state.version >= latest[key].state.version:
            latest[key] = record
    deliveries = []
    for key, group in grouped.items():
        events: dict[tuple[str, str], KlaviyoEvent] = {}
        for record in group:
            for event in timeline_events(record, config):
                events.setdefault((event.metric, event.unique_id), event)
        newest = latest[key]
        deliveries.append(
            CustomerDelivery(
                customer_key=key,
                tenant=newest.event.tenant,
                profile=profile_update(newest.state, config),
                events=list(events.values()),
                records=group,
                version=newest.state.version,
            )
        )
    return deliveries


def timeline_events(record: SyncRecord, config: ProjectionConfig) -> list[KlaviyoEvent]:
    """What one record adds to the customer's Klaviyo timeline.

    A repeated status (another snapshot of a return already in it) adds nothing, also when it is
    redelivered as a duplicate; an out-of-order status, a replayed record and a backfilled event
    are history: on the timeline, but flows must not fire. Other duplicates are sent again: the
    first send may have been lost in a crash, and Klaviyo drops the copy by unique_id.
    """
    if record.applied is Applied.REPEATED or _was_repeated(record):
        return []
    backfill = record.backfill or record.event.backfill or record.applied is Applied.OUT_OF_ORDER
    return klaviyo_events(record.event, config, backfill=backfill)


def _was_repeated(record: SyncRecord) -> bool:
    return_id = record.event.return_id
    known = record.state.returns.get(return_id) if return_id else None
    return (record.applied is Applied.DUPLICATE and known is not None
            and record.event.event_id in known.repeated_ids)


def admit(
    deliveries: Iterable[CustomerDelivery], floor: Callable[[str], int]
) -> tuple[list[CustomerDelivery], list[CustomerDelivery]]:
    """Split deliveries into those whose profile may be written and the stale ones.

    `floor(customer_key)` is the highest version already written (or about to be) for that
    customer. A lower version must never follow it: its profile write is dropped, its events
    still go (they are timeline facts, deduplicated by unique_id). An equal version is a
    redelivery of the same state and is written again, which is harmless and needed when the
    first write's outcome was lost.
    """
    fresh: list[CustomerDelivery] = []
    stale: list[CustomerDelivery] = []
    for delivery in deliveries:
        (fresh if delivery.version >= floor(delivery.customer_key) else stale).append(delivery)
    return fresh, stale


def sync_record_bytes(state: bytes, event: bytes, applied: Applied, ingested_at: datetime) -> bytes:
    """The outbox record (streams.outbox format) spliced from bytes already encoded.

    Both parts are valid JSON objects here (the state was just dumped; the event just parsed),
    so splicing skips encoding the state a second time on the hottest path.
    """
    tail = orjson.dumps({"applied": applied.value, "ingested_at": format_time(ingested_at)})
    # The stored state's JSON part: delivery needs all of it but the digest sets.
    return b'{"state":' + state_json(state) + b',"event":' + event + b"," + tail[1:]
