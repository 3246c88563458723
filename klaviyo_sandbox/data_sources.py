"""Custom objects: data sources and their record ingestion (Klaviyo's Custom Objects API).

A data source is a named inbox of records; Klaviyo turns its records into objects through an
object type the merchant maps in the UI (which field identifies an object, how it links to a
profile). The API only ingests, so the sandbox keeps every ingested record in arrival order and
lets tests read them (`/_sandbox/data-sources`), including the latest per identifying field.
An object type (the merchant's mapping) is made through `/_sandbox/object-types`; its objects are
then read as Klaviyo serves them (`GET /api/object-types/{id}/object-records`).
Both record endpoints answer 204 with no job to poll, like Klaviyo's.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from klaviyo_sandbox.errors import ApiError, invalid
from klaviyo_sandbox.payloads import check_schema
from klaviyo_sandbox.resources import base_url, paginate
from klaviyo_sandbox.store import Account, DataSource, DataSourceRecord, ObjectType, new_id, now_iso

logger = logging.getLogger("returnsync.sandbox")
BULK_RECORDS_MAX = 500
BULK_RECORDS_POINTER = "/data/attributes/data-source-records/data"
_SOURCE_POINTER = "/data/relationships/data-source/data/id"


def data_source_resource(source: DataSource, base: str) -> dict[str, Any]:
    return {
        "type": "data-source",
        "id": source.id,
        "attributes": {"title": source.title, "visibility": source.visibility,
                       "description": source.description, "namespace": source.namespace},
        "links": {"self": f"{base}/api/data-sources/{source.id}/"},
    }


def create(account: Account, body: Any) -> DataSource:
    check_schema("create_data_source", body)
    attributes: Mapping[str, Any] = body["data"]["attributes"]
    title = attributes["title"]
    if not 1 <= len(title) <= 255:
        raise invalid("'title' must be between 1 and 255 characters.", pointer="/data/attributes/title")
    namespace = attributes.get("namespace") or "custom-objects"
    if any(s.title == title and s.namespace == namespace for s in account.data_sources.values()):
        raise ApiError.single(409, f"A data source titled '{title}' already exists in namespace "
                                   f"'{namespace}'.", code="conflict", pointer="/data/attributes/title")
    source = DataSource(id=new_id(), title=title, visibility=attributes.get("visibility") or "private",
                        description=attributes.get("description") or "", namespace=namespace)
    account.data_sources[source.id] = source
    logger.info("sandbox.data_source.created id=%s", source.id)
    return source


def ingest(account: Account, body: Any, *, bulk: bool) -> int:
    """Validate the whole request, then store its records; a refused request stores nothing."""
    operation = "bulk_create_data_source_records" if bulk else "create_data_source_record"
    check_schema(operation, body)
    data = body["data"]
    source_id = (((data.get("relationships") or {}).get("data-source") or {}).get("data") or {}).get("id")
    if not source_id:
        raise invalid("'data-source' is a required relationship.", pointer="/data/relationships")
    source = account.data_sources.get(source_id)
    if source is None:
        raise ApiError.single(404, f"No data source with id '{source_id}'.", pointer=_SOURCE_POINTER)
    if bulk:
        records = (data["attributes"].get("data-source-records") or {}).get("data") or []
        if not records:
            raise invalid("At least one record is required.", pointer=BULK_RECORDS_POINTER)
        if len(records) > BULK_RECORDS_MAX:
            raise invalid(f"At most {BULK_RECORDS_MAX} records per request.", pointer=BULK_RECORDS_POINTER)
    else:
        records = [data["attributes"]["data-source-record"]["data"]]
    received = now_iso(precise=True)
    for record in records:
        source.records.append(DataSourceRecord(record["attributes"]["record"], received,
                                               "bulk" if bulk else "single"))
    return len(records)


def find(account: Account, request: web.Request) -> DataSource:
    source = account.data_sources.get(request.match_info["id"])
    if source is None:
        raise ApiError.single(404, "No data source with this id.", parameter="id")
    return source


def listing(account: Account, request: web.Request) -> tuple[list[dict[str, Any]], dict[str, str | None]]:
    page, links = paginate(request, list(account.data_sources.values()))
    base = base_url(request)
    return [data_source_resource(source, base) for source in page], links


def inspect(source: DataSource, key: str | None) -> dict[str, Any]:
    """What /_sandbox/data-sources shows: the source, every ingestion, and with `key` the latest
    record per value of that field."""
    shown: dict[str, Any] = {
        "id": source.id, "title": source.title, "namespace": source.namespace,
        "records": [{"record": r.record, "received_at": r.received_at, "via": r.via} for r in source.records],
    }
    if key is not None:
        shown["latest"] = source.latest(key)
    return shown


# --- object types: the merchant's mapping, read back -----------------------------------------


def add_object_type(account: Account, title: str, data_source_id: str, key: str) -> ObjectType:
    """What the merchant's setup in the UI makes (the sandbox's admin API stands in for it)."""
    if data_source_id not in account.data_sources:
        raise KeyError(data_source_id)
    object_type = ObjectType(new_id(), title, data_source_id, key, now_iso())
    account.object_types[object_type.id] = object_type
    return object_type


def object_type_resource(object_type: ObjectType, base: str) -> dict[str, Any]:
    return {
        "type": "object-type",
        "id": object_type.id,
        "attributes": {"title": object_type.title, "description": "", "status": "active",
                       "namespace": "custom-objects", "created_at": object_type.created_at,
                       "updated_at": object_type.created_at},
        "links": {"self": f"{base}/api/object-types/{object_type.id}/"},
    }


def object_records(account: Account, object_type: ObjectType) -> list[tuple[str, dict[str, Any]]]:
    """The objects: the latest record ingested per value of the type's key, in key order."""
    source = account.data_sources.get(object_type.data_source_id)
    latest = source.latest(object_type.key) if source is not None else {}
    return sorted(latest.items())


def object_record_resource(
    object_type: ObjectType, key: str, record: dict[str, Any], base: str
) -> dict[str, Any]:
    record_id = f"{object_type.id}:::{key}"
    return {"type": "object-record", "id": record_id, "attributes": {"record_properties": record},
            "links": {"self": f"{base}/api/object-records/{record_id}/"}}
