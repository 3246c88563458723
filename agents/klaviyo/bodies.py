"""JSON:API request bodies for the endpoints returnsync uses, as Klaviyo's OpenAPI spec has them.

Never a `subscriptions` or consent field: a return must never change marketing consent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

import orjson

from streams.events import format_time
from streams.projection import KlaviyoEvent, ProfileUpdate


def profile_import_body(update: ProfileUpdate) -> dict[str, Any]:
    """POST /api/profile-import. Properties set to None clear on Klaviyo's side."""
    attributes: dict[str, Any] = {"email": update.email, "properties": dict(update.properties)}
    # Only identifiers we trust: a wrong external_id would merge the wrong profiles (409s).
    for name in ("external_id", "first_name", "last_name"):
        value = getattr(update, name)
        if value is not None:
            attributes[name] = value
    return {"data": {"type": "profile", "attributes": attributes}}


def bulk_profile_item(update: ProfileUpdate) -> dict[str, Any]:
    """One profile of POST /api/profile-bulk-import-jobs.

    Bulk import ignores nulls, so a property to clear goes in meta.patch_properties.unset.
    """
    item: dict[str, Any] = profile_import_body(update)["data"]
    properties = item["attributes"]["properties"]
    cleared = [name for name, value in properties.items() if value is None]
    item["attributes"]["properties"] = {k: v for k, v in properties.items() if v is not None}
    if cleared:
        item["meta"] = {"patch_properties": {"unset": cleared}}
    return item


def bulk_profiles_body(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    return {"data": {"type": "profile-bulk-import-job", "attributes": {"profiles": {"data": list(items)}}}}


def bulk_event_item(event: KlaviyoEvent) -> dict[str, Any]:
    return {"type": "event", "attributes": event_attributes(event, with_profile=False)}


def bulk_event_entry(email: str, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """All of one profile's events in a POST /api/event-bulk-create-jobs request."""
    return {
        "type": "event-bulk-create",
        "attributes": {
            "profile": {"data": {"type": "profile", "attributes": {"email": email}}},
            "events": {"data": list(items)},
        },
    }


def bulk_events_body(entries: Sequence[dict[str, Any]]) -> dict[str, Any]:
    return {
        "data": {
            "type": "event-bulk-create-job",
            "attributes": {"events-bulk-create": {"data": list(entries)}},
        }
    }


def event_body(event: KlaviyoEvent) -> dict[str, Any]:
    """POST /api/events."""
    return {"data": {"type": "event", "attributes": event_attributes(event, with_profile=True)}}


def event_attributes(event: KlaviyoEvent, *, with_profile: bool) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "metric": {"data": {"type": "metric", "attributes": {"name": event.metric}}},
        "properties": dict(event.properties),
        "time": format_time(event.time),
        "unique_id": event.unique_id,
    }
    if with_profile:
        attributes["profile"] = {"data": {"type": "profile", "attributes": {"email": event.email}}}
    if event.value is not None:
        attributes["value"] = event.value
        if event.value_currency:
            attributes["value_currency"] = event.value_currency
    if event.backfill:
        attributes["backfill"] = True
    return attributes


def encode(body: dict[str, Any]) -> bytes:
    return orjson.dumps(body, default=_json_default)


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        # JSON numbers are what Klaviyo segments on; amounts are two-decimal money, exact in float.
        return float(value)
    raise TypeError(f"cannot encode {type(value).__name__}")


def data_source_body(title: str) -> dict[str, Any]:
    """POST /api/data-sources: a private source in the default namespace."""
    return {"data": {"type": "data-source", "attributes": {
        "title": title, "visibility": "private",
        "description": "One record per return, kept in step by returnsync.",
    }}}


def data_source_record_item(record: Mapping[str, Any]) -> dict[str, Any]:
    return {"type": "data-source-record", "attributes": {"record": dict(record)}}


def data_source_record_body(source_id: str, item: dict[str, Any]) -> dict[str, Any]:
    """POST /api/data-source-record-create-jobs: one record."""
    return {"data": {"type": "data-source-record-create-job",
                     "attributes": {"data-source-record": {"data": item}},
                     "relationships": _data_source(source_id)}}


def data_source_records_body(source_id: str, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """POST /api/data-source-record-bulk-create-jobs: up to 500 records."""
    return {"data": {"type": "data-source-record-bulk-create-job",
                     "attributes": {"data-source-records": {"data": list(items)}},
                     "relationships": _data_source(source_id)}}


def _data_source(source_id: str) -> dict[str, Any]:
    return {"data-source": {"data": {"type": "data-source", "id": source_id}}}
