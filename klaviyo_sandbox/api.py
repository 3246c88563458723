"""Handlers for the Klaviyo endpoints returnsync uses.

By the time a handler runs, the server's pipeline has authenticated the key, rate-limited
it, checked the revision and media type and parsed the body, all recorded in the request's
`Exchange`; handlers only apply Klaviyo's semantics.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web

from klaviyo_sandbox import data_sources, payloads
from klaviyo_sandbox.errors import ApiError, duplicate_profile, invalid
from klaviyo_sandbox.payloads import EventWrite
from klaviyo_sandbox.resources import (
    base_url,
    field_list,
    import_error_resource,
    job_resource,
    paginate,
    parse_filter,
    profile_resource,
)
from klaviyo_sandbox.store import (
    Account,
    EventRecord,
    ImportJob,
    ProfileConflict,
    ProfileNotFound,
    ProfileWrite,
    Store,
    new_id,
    now_iso,
)

logger = logging.getLogger("returnsync.sandbox")
JSON_API = "application/vnd.api+json"
Handler = Callable[[web.Request], Any]


@dataclass(frozen=True)
class Endpoint:
    operation_id: str
    method: str
    path: str
    max_body_bytes: int | None  # None: the endpoint takes no body


ENDPOINTS = {
    endpoint.operation_id: endpoint
    for endpoint in (
        Endpoint("create_or_update_profile", "POST", "/api/profile-import", 100_000),
        Endpoint("create_event", "POST", "/api/events", 5_000_000),
        Endpoint("get_profiles", "GET", "/api/profiles", None),
        Endpoint("bulk_import_profiles", "POST", "/api/profile-bulk-import-jobs", 5_000_000),
        Endpoint("get_bulk_import_profiles_job", "GET", "/api/profile-bulk-import-jobs/{job_id}", None),
        Endpoint("get_errors_for_bulk_import_profiles_job", "GET",
                 "/api/profile-bulk-import-jobs/{job_id}/import-errors", None),
        Endpoint("bulk_create_events", "POST", "/api/event-bulk-create-jobs", 5_000_000),
        Endpoint("get_data_sources", "GET", "/api/data-sources", None),
        Endpoint("create_data_source", "POST", "/api/data-sources", 100_000),
        Endpoint("get_data_source", "GET", "/api/data-sources/{id}", None),
        Endpoint("delete_data_source", "DELETE", "/api/data-sources/{id}", None),
        # 4 MB a request (Klaviyo's custom-objects guide); one record is held to the same.
        Endpoint("bulk_create_data_source_records", "POST", "/api/data-source-record-bulk-create-jobs",
                 4_000_000),
        Endpoint("create_data_source_record", "POST", "/api/data-source-record-create-jobs", 4_000_000),
        Endpoint("get_object_types", "GET", "/api/object-types", None),
        Endpoint("get_records_for_object_type", "GET", "/api/object-types/{id}/object-records", None),
    )
}


def api_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type=JSON_API, headers=headers)


@dataclass
class Exchange:
    """What the pipeline learnt about one request, for its handler and the request log."""

    account: str | None = None
    body: Any = None
    items: int = 0  # profiles/events carried or returned, for /_sandbox/requests
    fault: str | None = None
    received_at: str | None = None  # when the pipeline first saw it, to check Retry-After waits


EXCHANGE = web.RequestKey("sandbox_exchange", Exchange)


def set_items(request: web.Request, count: int) -> None:
    request[EXCHANGE].items = count


class KlaviyoApi:
    def __init__(self, store: Store, schedule_job: Callable[[Account, ImportJob], None]) -> None:
        self._store = store
        self._schedule_job = schedule_job

    def handlers(self) -> dict[str, Handler]:
        return {
            "create_or_update_profile": self.profile_import,
            "create_event": self.create_event,
            "get_profiles": self.get_profiles,
            "bulk_import_profiles": self.bulk_import_profiles,
            "get_bulk_import_profiles_job": self.get_import_job,
            "get_errors_for_bulk_import_profiles_job": self.get_import_errors,
            "bulk_create_events": self.bulk_create_events,
            "get_data_sources": self.get_data_sources,
            "create_data_source": self.create_data_source,
            "get_data_source": self.get_data_source,
            "delete_data_source": self.delete_data_source,
            "bulk_create_data_source_records": self.bulk_create_records,
            "create_data_source_record": self.create_record,
            "get_object_types": self.get_object_types,
            "get_records_for_object_type": self.get_object_records,
        }

    def _account(self, request: web.Request) -> Account:
        return self._store.account(request[EXCHANGE].account or "")

    async def profile_import(self, request: web.Request) -> web.Response:
        write = payloads.profile_import(request[EXCHANGE].body)
        set_items(request, 1)
        account = self._account(request)
        try:
            profile, created = account.upsert(write, clear_nulls=True)
        except ProfileConflict as conflict:
            raise duplicate_profile(conflict.profile_id) from None
        except ProfileNotFound:
            raise ApiError.single(404, "A profile with this id does not exist.", pointer="/data/id") from None
        fields = field_list(request, "profile")
        resource = profile_resource(profile, base_url(request), fields)
        return api_response({"data": resource}, 201 if created else 200)

    async def create_event(self, request: web.Request) -> web.Response:
        profile, event = payloads.event(request[EXCHANGE].body, datetime.now(UTC))
        set_items(request, 1)
        account = self._account(request)
        try:
            self._record(account, profile, [event])
        except ProfileConflict as conflict:
            raise duplicate_profile(conflict.profile_id) from None
        except ProfileNotFound:
            raise invalid("No profile with this id.", pointer="/data/attributes/profile/data/id") from None
        return web.Response(status=202)

    async def bulk_create_events(self, request: web.Request) -> web.Response:
        # Validation of the whole request happens first: a refused request stores nothing.
        entries = payloads.bulk_events(request[EXCHANGE].body, datetime.now(UTC))
        set_items(request, sum(len(events) for _, events in entries))
        account = self._account(request)
        for index, (profile, events) in enumerate(entries):
            try:
                self._record(account, profile, events)
            except (ProfileConflict, ProfileNotFound) as error:
                # Klaviyo processes these jobs asynchronously, so one bad profile cannot fail
                # the accepted request; its events are dropped, as a real job would.
                logger.warning("sandbox.bulk_events.entry_failed index=%d reason=%s",
                               index, type(error).__name__)
        return web.Response(status=202)

    def _record(self, account: Account, write: ProfileWrite, events: list[EventWrite]) -> None:
        profile, _ = account.upsert(write, clear_nulls=True)
        received = now_iso()
        for event in events:
            account.add_event(EventRecord(
                id=new_id(), profile_id=profile.id, email=profile.fields.get("email"), metric=event.metric,
                unique_id=event.unique_id, time=event.time, value=event.value,
                value_currency=event.value_currency, properties=event.properties, backfill=event.backfill,
                received_at=received,
            ))

    async def get_profiles(self, request: web.Request) -> web.Response:
        wanted = parse_filter(request.query.get("filter"))
        account = self._account(request)
        profiles = list(account.profiles.values())
        if wanted is not None:
            found = (account.find(wanted.field, value) for value in wanted.values)
            ids = {profile.id for profile in found if profile is not None}
            profiles = [profile for profile in profiles if profile.id in ids]
        page, links = paginate(request, profiles)
        set_items(request, len(page))
        fields = field_list(request, "profile")
        base = base_url(request)
        return api_response({"data": [profile_resource(p, base, fields) for p in page], "links": links})

    async def bulk_import_profiles(self, request: web.Request) -> web.Response:
        parsed = payloads.bulk_profiles(request[EXCHANGE].body)
        total = len(parsed.accepted) + len(parsed.rejected)
        set_items(request, total)
        account = self._account(request)
        job = ImportJob(id=new_id(), created_at=now_iso(), total_count=total, pending=parsed.accepted,
                        rejected=parsed.rejected, list_ids=parsed.list_ids)
        account.jobs[job.id] = job
        self._schedule_job(account, job)
        logger.info("sandbox.bulk_import.queued job=%s total=%d rejected=%d",
                    job.id, total, len(parsed.rejected))
        return api_response({"data": job_resource(job, base_url(request))}, 202)

    def _job(self, request: web.Request) -> ImportJob:
        job = self._account(request).jobs.get(request.match_info["job_id"])
        if job is None:
            raise ApiError.single(404, "No profile-bulk-import-job with this id.", parameter="id")
        return job

    async def get_import_job(self, request: web.Request) -> web.Response:
        job = self._job(request)
        set_items(request, 1)
        return api_response({"data": job_resource(job, base_url(request))})

    async def get_import_errors(self, request: web.Request) -> web.Response:
        job = self._job(request)
        # Rows appear as the job works through them; here all at once when it completes.
        rows = job.errors if job.status == "complete" else []
        page, links = paginate(request, rows)
        set_items(request, len(page))
        return api_response({"data": [import_error_resource(row) for row in page], "links": links})

    # --- custom objects (klaviyo_sandbox/data_sources.py) ------------------------------------

    async def get_data_sources(self, request: web.Request) -> web.Response:
        page, links = data_sources.listing(self._account(request), request)
        set_items(request, len(page))
        return api_response({"data": page, "links": links})

    async def create_data_source(self, request: web.Request) -> web.Response:
        source = data_sources.create(self._account(request), request[EXCHANGE].body)
        set_items(request, 1)
        return api_response({"data": data_sources.data_source_resource(source, base_url(request))}, 201)

    async def get_data_source(self, request: web.Request) -> web.Response:
        source = data_sources.find(self._account(request), request)
        set_items(request, 1)
        return api_response({"data": data_sources.data_source_resource(source, base_url(request))})

    async def delete_data_source(self, request: web.Request) -> web.Response:
        account = self._account(request)
        del account.data_sources[data_sources.find(account, request).id]
        return web.Response(status=204)

    async def bulk_create_records(self, request: web.Request) -> web.Response:
        set_items(request, data_sources.ingest(self._account(request), request[EXCHANGE].body, bulk=True))
        return web.Response(status=204)

    async def create_record(self, request: web.Request) -> web.Response:
        set_items(request, data_sources.ingest(self._account(request), request[EXCHANGE].body, bulk=False))
        return web.Response(status=204)

    async def get_object_types(self, request: web.Request) -> web.Response:
        account = self._account(request)
        page, links = paginate(request, list(account.object_types.values()))
        set_items(request, len(page))
        base = base_url(request)
        found = [data_sources.object_type_resource(object_type, base) for object_type in page]
        return api_response({"data": found, "links": links})

    async def get_object_records(self, request: web.Request) -> web.Response:
        account = self._account(request)
        object_type = account.object_types.get(request.match_info["id"])
        if object_type is None:
            raise ApiError.single(404, "No object type with this id.", parameter="id")
        page, links = paginate(request, data_sources.object_records(account, object_type))
        set_items(request, len(page))
        base = base_url(request)
        return api_response({"data": [data_sources.object_record_resource(object_type, key, record, base)
                                      for key, record in page], "links": links})
