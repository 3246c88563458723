"""Turn a request body into store writes, or refuse it the way Klaviyo would.

Schema first (the committed OAS extract), then the documented rules, so rule checks can
rely on the shapes the schema guaranteed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from klaviyo_sandbox import rules
from klaviyo_sandbox.errors import ApiError, ErrorItem
from klaviyo_sandbox.store import ImportErrorRow, ProfileWrite, new_id
from klaviyo_sandbox.validation import Violation, catalog, parse_date_time, validate

MAX_ERRORS_REPORTED = 20
BULK_EVENTS_MAX = 1000
BULK_PROFILES_MAX = 10_000
PROFILE_BYTES_MAX = 100_000
BULK_EVENTS_POINTER = "/data/attributes/events-bulk-create/data"
BULK_PROFILES_POINTER = "/data/attributes/profiles/data"


@dataclass(frozen=True)
class EventWrite:
    metric: str
    unique_id: str | None
    time: str
    value: float | int | None
    value_currency: str | None
    properties: dict[str, Any]
    backfill: bool


@dataclass(frozen=True)
class BulkProfiles:
    accepted: list[tuple[int, ProfileWrite, Any]]
    rejected: list[ImportErrorRow]
    list_ids: list[str]


def refuse_if(violations: Iterable[Violation]) -> None:
    found = list(violations)
    if found:
        items = [ErrorItem(400, v.detail, pointer=v.pointer or "/") for v in found[:MAX_ERRORS_REPORTED]]
        raise ApiError(items)


def check_schema(operation_id: str, body: Any) -> None:
    schema = catalog()[operation_id].request_schema
    if schema is not None:
        refuse_if(validate(body, schema))


def profile_import(body: Any) -> ProfileWrite:
    check_schema("create_or_update_profile", body)
    data = body["data"]
    attributes = data["attributes"]
    refuse_if([
        *rules.profile_identity(attributes, data.get("id") is not None, "/data/attributes"),
        *rules.long_strings(body),
    ])
    return ProfileWrite(attributes, data.get("id"), (data.get("meta") or {}).get("patch_properties"))


def event(body: Any, now: datetime) -> tuple[ProfileWrite, EventWrite]:
    check_schema("create_event", body)
    attributes = body["data"]["attributes"]
    profile_data = attributes["profile"]["data"]
    profile_pointer = "/data/attributes/profile/data"
    refuse_if([
        *rules.event_attributes(attributes, "/data/attributes", now),
        *_event_profile(profile_data, profile_pointer),
        *rules.long_strings(body),
    ])
    # OAS 2026-07-15 puts the event profile's meta inside attributes (klaviyo-api.md §2.1).
    profile_attributes = dict(profile_data["attributes"])
    meta = profile_attributes.pop("meta", None) or {}
    profile = ProfileWrite(profile_attributes, profile_data.get("id"), meta.get("patch_properties"))
    return profile, _event_write(attributes, default_backfill=False, now=now)


def bulk_events(body: Any, now: datetime) -> list[tuple[ProfileWrite, list[EventWrite]]]:
    """One profile write per entry, however many events the entry carries."""
    check_schema("bulk_create_events", body)
    entries = body["data"]["attributes"]["events-bulk-create"]["data"]
    total = sum(len(entry["attributes"]["events"]["data"]) for entry in entries)
    if total > BULK_EVENTS_MAX:
        detail = f"At most {BULK_EVENTS_MAX} events per request ({total})."
        refuse_if([Violation(BULK_EVENTS_POINTER, detail)])
    violations: list[Violation] = []
    seen: dict[tuple[tuple[str, str], str, str], str] = {}
    writes: list[tuple[ProfileWrite, list[EventWrite]]] = []
    for i, entry in enumerate(entries):
        profile_data = entry["attributes"]["profile"]["data"]
        entry_pointer = f"{BULK_EVENTS_POINTER}/{i}/attributes"
        violations.extend(_event_profile(profile_data, f"{entry_pointer}/profile/data"))
        who = rules.identity_key(profile_data)
        # Bulk puts the profile's meta beside attributes, unlike the single endpoint.
        patch = (profile_data.get("meta") or {}).get("patch_properties")
        events: list[EventWrite] = []
        writes.append((ProfileWrite(profile_data["attributes"], profile_data.get("id"), patch), events))
        default_backfill = bool(entry["attributes"].get("backfill"))
        for j, item in enumerate(entry["attributes"]["events"]["data"]):
            pointer = f"{entry_pointer}/events/data/{j}/attributes"
            attributes = item["attributes"]
            violations.extend(rules.event_attributes(attributes, pointer, now))
            metric = attributes["metric"]["data"]["attributes"]["name"]
            unique_id = attributes.get("unique_id")
            if isinstance(unique_id, str):
                first = seen.setdefault((who, metric, unique_id), pointer)
                if first != pointer:
                    violations.append(Violation(f"{pointer}/unique_id", (
                        f"unique_id '{unique_id}' repeats {first}/unique_id for the same profile and "
                        "metric; the request fails and no events are processed.")))
            events.append(_event_write(attributes, default_backfill=default_backfill, now=now))
    refuse_if([*violations, *rules.long_strings(body)])
    return writes


def bulk_profiles(body: Any) -> BulkProfiles:
    """Body-level problems refuse the request; a bad profile only fails its own row."""
    check_schema("bulk_import_profiles", body)
    items = body["data"]["attributes"]["profiles"]["data"]
    if len(items) > BULK_PROFILES_MAX:
        refuse_if([Violation(BULK_PROFILES_POINTER, f"At most {BULK_PROFILES_MAX} profiles per request.")])
    accepted: list[tuple[int, ProfileWrite, Any]] = []
    rejected: list[ImportErrorRow] = []
    for index, item in enumerate(items):
        pointer = f"{BULK_PROFILES_POINTER}/{index}"
        if len(orjson.dumps(item)) > PROFILE_BYTES_MAX:
            detail = f"Profile {index} exceeds the 100 KB per-profile limit."
            raise ApiError.single(413, detail, pointer=pointer)
        attributes = item["attributes"]
        problems = [
            *rules.profile_identity(attributes, item.get("id") is not None, f"{pointer}/attributes"),
            *rules.long_strings(item, pointer),
        ]
        if problems:
            first = problems[0]
            rejected.append(
                ImportErrorRow(new_id(), "invalid", "Invalid input.", first.detail, first.pointer, item)
            )
            continue
        patch = (item.get("meta") or {}).get("patch_properties")
        accepted.append((index, ProfileWrite(attributes, item.get("id"), patch), item))
    lists = (body["data"].get("relationships") or {}).get("lists") or {}
    return BulkProfiles(accepted, rejected, [entry["id"] for entry in lists.get("data") or []])


def _event_profile(profile_data: Mapping[str, Any], pointer: str) -> list[Violation]:
    out = rules.profile_identity(
        profile_data.get("attributes") or {}, profile_data.get("id") is not None, f"{pointer}/attributes",
        event_profile=True,
    )
    if len(orjson.dumps(profile_data)) > rules.EVENT_PROFILE_BYTES_MAX:
        out.append(Violation(pointer, "An event's profile object may be at most 95 KB."))
    return out


def _event_write(attributes: Mapping[str, Any], *, default_backfill: bool, now: datetime) -> EventWrite:
    raw_time = attributes.get("time")
    parsed = parse_date_time(raw_time) if isinstance(raw_time, str) else None
    # Klaviyo truncates event time to the second; storing UTC keeps comparisons textual.
    moment = (parsed or now).astimezone(UTC).replace(microsecond=0)
    backfill = attributes.get("backfill")
    return EventWrite(
        metric=attributes["metric"]["data"]["attributes"]["name"],
        unique_id=attributes.get("unique_id"),
        time=moment.isoformat(),
        value=attributes.get("value"),
        value_currency=attributes.get("value_currency"),
        properties=dict(attributes.get("properties") or {}),
        backfill=default_backfill if backfill is None else bool(backfill),
    )
