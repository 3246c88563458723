"""The sandbox's state: accounts holding profiles, events and bulk jobs. Plain data, no HTTP.

Everything runs on one event loop, so there are no locks: each mutation completes between
two awaits, which is also how the sandbox keeps a rejected bulk request from half-storing.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from klaviyo_sandbox.merge import STANDARD_FIELDS, apply_attributes, normalise_email, patch_properties

INDEXED = ("email", "phone_number", "external_id", "anonymous_id")
# A long-running dev sandbox must not grow without bound on its request log alone.
REQUEST_LOG_MAX = 100_000
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_id() -> str:
    """26-char ULID-shaped id, like Klaviyo's (01GSQPBF74KQ5YTDEPP41T1BZH)."""
    number = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10), "big")
    return "".join(_CROCKFORD[(number >> shift) & 31] for shift in range(125, -1, -5))


def now_iso(*, precise: bool = False) -> str:
    """Resources carry whole seconds like Klaviyo's; logs keep milliseconds so a test can
    check that a client really waited out a Retry-After."""
    return datetime.now(UTC).isoformat(timespec="milliseconds" if precise else "seconds")


class ProfileConflict(Exception):
    def __init__(self, profile_id: str) -> None:
        super().__init__(profile_id)
        self.profile_id = profile_id


class ProfileNotFound(Exception):
    pass


@dataclass(frozen=True)
class ProfileWrite:
    """One profile as a request names and changes it."""

    attributes: Mapping[str, Any]
    profile_id: str | None = None
    patch: Mapping[str, Any] | None = None


@dataclass
class Profile:
    id: str
    created: str
    updated: str
    fields: dict[str, Any] = field(default_factory=dict)
    location: dict[str, Any] = field(default_factory=dict)
    properties: dict[str, Any] = field(default_factory=dict)
    last_event_date: str | None = None

    def inspect(self) -> dict[str, Any]:
        flat: dict[str, Any] = {"id": self.id}
        flat.update({name: self.fields.get(name) for name in STANDARD_FIELDS})
        flat.update(location=dict(self.location), properties=dict(self.properties), created=self.created,
                    updated=self.updated, last_event_date=self.last_event_date)
        return flat


@dataclass
class EventRecord:
    id: str
    profile_id: str
    email: str | None
    metric: str
    unique_id: str | None
    time: str
    value: float | int | None
    value_currency: str | None
    properties: dict[str, Any]
    backfill: bool
    received_at: str

    def inspect(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ImportErrorRow:
    id: str
    code: str
    title: str
    detail: str
    pointer: str
    original_payload: Any


@dataclass
class ImportJob:
    id: str
    created_at: str
    total_count: int
    pending: list[tuple[int, ProfileWrite, Any]]
    rejected: list[ImportErrorRow]
    list_ids: list[str]
    status: str = "queued"
    started_at: str | None = None
    completed_at: str | None = None
    completed_count: int = 0
    failed_count: int = 0
    errors: list[ImportErrorRow] = field(default_factory=list)
    profile_ids: list[str] = field(default_factory=list)


@dataclass
class DataSourceRecord:
    """One record as ingested, in arrival order. Which field identifies an object is set up in
    Klaviyo's UI (the object type's mapping), so the store keeps every ingestion."""

    record: dict[str, Any]
    received_at: str
    via: str  # "single" or "bulk"


@dataclass
class DataSource:
    id: str
    title: str
    visibility: str
    description: str
    namespace: str
    records: list[DataSourceRecord] = field(default_factory=list)

    def latest(self, key: str) -> dict[str, Any]:
        """What an object type keyed by the record field `key` would show: the last record ingested
        per value of `key` (records without it are not objects)."""
        found: dict[str, Any] = {}
        for stored in self.records:
            value = stored.record.get(key)
            if isinstance(value, str | int):
                found[str(value)] = stored.record
        return found


@dataclass
class ObjectType:
    """What a merchant sets up in Klaviyo's UI over a data source: which record field identifies
    an object. Record fields map to object properties under the same names."""

    id: str
    title: str
    data_source_id: str
    key: str
    created_at: str


@dataclass
class Account:
    name: str
    profiles: dict[str, Profile] = field(default_factory=dict)
    events: list[EventRecord] = field(default_factory=list)
    jobs: dict[str, ImportJob] = field(default_factory=dict)
    data_sources: dict[str, DataSource] = field(default_factory=dict)
    object_types: dict[str, ObjectType] = field(default_factory=dict)
    _index: dict[str, dict[str, str]] = field(default_factory=lambda: {name: {} for name in INDEXED})
    _event_keys: set[tuple[str, str, str]] = field(default_factory=set)

    def find(self, name: str, value: str) -> Profile | None:
        key = normalise_email(value) if name == "email" else value
        if name == "id":
            return self.profiles.get(value)
        profile_id = self._index.get(name, {}).get(key)
        return self.profiles.get(profile_id) if profile_id else None

    def upsert(self, write: ProfileWrite, *, clear_nulls: bool) -> tuple[Profile, bool]:
        """Find the profile the write names (id, then identifiers) and apply it.

        Identifiers that point at two different profiles are Klaviyo's 409 duplicate_profile.
        """
        matches: list[str] = []
        if write.profile_id is not None:
            if write.profile_id not in self.profiles:
                raise ProfileNotFound(write.profile_id)
            matches.append(write.profile_id)
        for name in INDEXED:
            value = write.attributes.get(name)
            found = self.find(name, value) if isinstance(value, str) and value else None
            if found is not None and found.id not in matches:
                matches.append(found.id)
        if len(matches) > 1:
            raise ProfileConflict(matches[1])
        stamp = now_iso()
        created = not matches
        profile = Profile(new_id(), stamp, stamp) if created else self.profiles[matches[0]]
        before = {name: profile.fields.get(name) for name in INDEXED}
        profile.fields, profile.location, properties = apply_attributes(
            profile.fields, profile.location, profile.properties, write.attributes, clear_nulls=clear_nulls
        )
        profile.properties = patch_properties(properties, write.patch)
        profile.updated = stamp
        self.profiles[profile.id] = profile
        self._reindex(profile, before)
        return profile, created

    def _reindex(self, profile: Profile, before: Mapping[str, Any]) -> None:
        for name in INDEXED:
            old, new = before.get(name), profile.fields.get(name)
            if old == new:
                continue
            if isinstance(old, str) and self._index[name].get(old) == profile.id:
                del self._index[name][old]
            if isinstance(new, str):
                self._index[name][new] = profile.id

    def add_event(self, event: EventRecord) -> bool:
        """Store unless (profile, metric, unique_id) was seen; without a unique_id Klaviyo
        uses the time to the second, so the same applies here."""
        key = (event.profile_id, event.metric, event.unique_id or event.time[:19])
        if key in self._event_keys:
            return False
        self._event_keys.add(key)
        self.events.append(event)
        profile = self.profiles[event.profile_id]
        if profile.last_event_date is None or event.time > profile.last_event_date:
            profile.last_event_date = event.time
        return True

    def start_job(self, job: ImportJob) -> None:
        if job.status == "queued":
            job.status, job.started_at = "processing", now_iso()

    def finish_job(self, job: ImportJob) -> None:
        """Apply a bulk import. Nulls are ignored here: bulk import cannot clear fields."""
        if job.status == "complete":
            return
        self.start_job(job)
        errors = list(job.rejected)
        for index, write, original in job.pending:
            try:
                profile, _ = self.upsert(write, clear_nulls=False)
            except ProfileConflict as conflict:
                errors.append(ImportErrorRow(new_id(), "duplicate_profile", "Conflict.",
                                             f"Identifiers belong to different profiles "
                                             f"({conflict.profile_id}).",
                                             f"/data/attributes/profiles/data/{index}", original))
            except ProfileNotFound:
                errors.append(ImportErrorRow(new_id(), "not_found", "Not found.", "No profile with this id.",
                                             f"/data/attributes/profiles/data/{index}/id", original))
            else:
                job.profile_ids.append(profile.id)
        job.errors = sorted(errors, key=lambda row: _row_index(row.pointer))
        job.failed_count = len(errors)
        job.completed_count = job.total_count - job.failed_count
        job.status, job.completed_at, job.pending = "complete", now_iso(), []

    def plant(self, email: str, properties: Mapping[str, Any], *, merge: bool) -> tuple[Profile, bool]:
        """Overwrite properties behind the API's back, to simulate drift made in Klaviyo's UI."""
        existing = self.find("email", email)
        profile, created = (existing, False) if existing else self.upsert(
            ProfileWrite({"email": email}), clear_nulls=False
        )
        profile.properties = {**profile.properties, **properties} if merge else dict(properties)
        profile.updated = now_iso()
        return profile, created


@dataclass(frozen=True)
class RequestRecord:
    at: str
    account: str | None
    method: str
    path: str
    status: int | None
    items: int
    fault: str | None = None
    received_at: str | None = None  # `at` is when the answer went out


@dataclass(frozen=True)
class ConsentViolation:
    at: str
    account: str | None
    method: str
    path: str
    kind: str  # "endpoint" or "field"
    detail: str


class Store:
    def __init__(self, accounts: Iterable[str]) -> None:
        self.account_names = tuple(dict.fromkeys(accounts))
        self.accounts = {name: Account(name) for name in self.account_names}
        self.requests: deque[RequestRecord] = deque(maxlen=REQUEST_LOG_MAX)
        self.violations: list[ConsentViolation] = []

    def account(self, name: str) -> Account:
        if name not in self.accounts:
            raise KeyError(f"unknown sandbox account {name!r}")
        return self.accounts[name]

    def reset(self, account: str | None = None) -> None:
        if account is None:
            self.accounts = {name: Account(name) for name in self.account_names}
            self.requests.clear()
            self.violations.clear()
            return
        self.accounts[account] = Account(account)
        kept = [record for record in self.requests if record.account != account]
        self.requests = deque(kept, maxlen=REQUEST_LOG_MAX)
        self.violations = [record for record in self.violations if record.account != account]


def _row_index(pointer: str) -> int:
    """Import errors are listed in payload order, whichever stage rejected them."""
    parts = pointer.split("/")
    return int(parts[5]) if len(parts) > 5 and parts[5].isdigit() else -1
