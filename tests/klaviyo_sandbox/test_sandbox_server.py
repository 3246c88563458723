"""The Klaviyo sandbox over real HTTP: one behaviour per test, asserted on status, body and
what the sandbox stored. Waits poll with a deadline; nothing sleeps blindly."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from klaviyo_sandbox import SandboxServer

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "klaviyo_sandbox" / "reference" / "examples"
KEYS = {"sandbox-key": "default", "other-key": "other"}
HEADERS = {
    "Authorization": "Klaviyo-API-Key sandbox-key",
    "revision": "2026-07-15",
    "Content-Type": "application/vnd.api+json",
    "Accept": "application/vnd.api+json",
}
WHEN = "2026-05-01T10:00:00+00:00"


# ---------------------------------------------------------------- fixtures and helpers

Starter = Callable[..., Awaitable[SandboxServer]]


@pytest.fixture
async def start_sandbox() -> AsyncIterator[Starter]:
    started: list[SandboxServer] = []

    async def start(**kwargs: Any) -> SandboxServer:
        kwargs.setdefault("api_keys", KEYS)
        kwargs.setdefault("rate_limit_scale", 0)
        server = SandboxServer(**kwargs)
        await server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        await server.stop()


@pytest.fixture
async def sandbox(start_sandbox: Starter) -> SandboxServer:
    return await start_sandbox()


@pytest.fixture
async def client(sandbox: SandboxServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=sandbox.url, headers=HEADERS, timeout=10) as http:
        yield http


async def eventually(check: Callable[[], Awaitable[T | None]], what: str, within: float = 5.0) -> T:
    deadline = time.monotonic() + within
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.02)


def profile_body(
    email: str | None = None, meta: dict[str, Any] | None = None, **attributes: Any
) -> dict[str, Any]:
    if email is not None:
        attributes["email"] = email
    data: dict[str, Any] = {"type": "profile", "attributes": attributes}
    if meta is not None:
        data["meta"] = meta
    return {"data": data}


def event_attributes(
    metric: str = "Return Requested", unique_id: str | None = "evt-1", **extra: Any
) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "metric": {"data": {"type": "metric", "attributes": {"name": metric}}},
        "properties": extra.pop("properties", {"ReturnId": "R-1"}),
        "time": extra.pop("time", WHEN),
        **extra,
    }
    if unique_id is not None:
        attributes["unique_id"] = unique_id
    return attributes


def event_body(email: str, profile: dict[str, Any] | None = None, **event: Any) -> dict[str, Any]:
    attributes = event_attributes(**event)
    attributes["profile"] = {"data": {"type": "profile", "attributes": {"email": email, **(profile or {})}}}
    return {"data": {"type": "event", "attributes": attributes}}


def bulk_events_body(
    entries: list[tuple[str, list[dict[str, Any]]]], backfill: bool | None = None
) -> dict[str, Any]:
    data = []
    for email, events in entries:
        attributes: dict[str, Any] = {
            "profile": {"data": {"type": "profile", "attributes": {"email": email}}},
            "events": {"data": [{"type": "event", "attributes": event} for event in events]},
        }
        if backfill is not None:
            attributes["backfill"] = backfill
        data.append({"type": "event-bulk-create", "attributes": attributes})
    return {"data": {"type": "event-bulk-create-job", "attributes": {"events-bulk-create": {"data": data}}}}


def bulk_profiles_body(profiles: list[dict[str, Any]]) -> dict[str, Any]:
    items = [{"type": "profile", **profile} for profile in profiles]
    return {"data": {"type": "profile-bulk-import-job", "attributes": {"profiles": {"data": items}}}}


def only_error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    errors = response.json()["errors"]
    assert (
        errors and {"id", "status", "code", "title", "detail", "source", "links", "meta"} <= errors[0].keys()
    )
    assert errors[0]["status"] == status
    return dict(errors[0])


def by_email(sandbox: SandboxServer, email: str, account: str = "default") -> dict[str, Any]:
    matches = [p for p in sandbox.profiles(account) if p["email"] == email]
    assert len(matches) == 1, f"{email}: {matches}"
    return matches[0]


async def wait_job(client: httpx.AsyncClient, job_id: str, seen: list[str] | None = None) -> dict[str, Any]:
    async def complete() -> dict[str, Any] | None:
        response = await client.get(f"/api/profile-bulk-import-jobs/{job_id}")
        assert response.status_code == 200, response.text
        attributes: dict[str, Any] = response.json()["data"]["attributes"]
        if seen is not None and (not seen or seen[-1] != attributes["status"]):
            seen.append(attributes["status"])
        return attributes if attributes["status"] == "complete" else None

    return await eventually(complete, f"job {job_id} to complete")


# ---------------------------------------------------------------- profile-import


async def test_profile_import_creates_then_updates_the_same_profile(client: httpx.AsyncClient) -> None:
    first = await client.post("/api/profile-import", json=profile_body("ana@shop.io", first_name="Ana"))
    second = await client.post("/api/profile-import", json=profile_body("ANA@shop.io", last_name="Lima"))
    assert (first.status_code, second.status_code) == (201, 200), second.text
    assert first.json()["data"]["id"] == second.json()["data"]["id"]
    attributes = second.json()["data"]["attributes"]
    assert (attributes["email"], attributes["first_name"], attributes["last_name"]) == (
        "ana@shop.io",
        "Ana",
        "Lima",
    )


async def test_profile_import_null_clears_and_omission_keeps(
    client: httpx.AsyncClient, sandbox: SandboxServer
) -> None:
    await client.post(
        "/api/profile-import",
        json=profile_body(
            "bo@shop.io",
            first_name="Bo",
            last_name="Ek",
            properties={"returns_active": True, "returns_count": 2},
        ),
    )
    response = await client.post(
        "/api/profile-import",
        json=profile_body("bo@shop.io", first_name=None, properties={"returns_active": None}),
    )
    assert response.status_code == 200, response.text
    stored = by_email(sandbox, "bo@shop.io")
    assert stored["first_name"] is None and stored["last_name"] == "Ek"
    assert stored["properties"] == {"returns_count": 2}


async def test_profile_import_patch_properties(client: httpx.AsyncClient, sandbox: SandboxServer) -> None:
    await client.post(
        "/api/profile-import",
        json=profile_body("cy@shop.io", properties={"skus": ["A"], "open_return": "R-1", "keep": 1}),
    )
    meta = {
        "patch_properties": {
            "append": {"skus": ["B", "C"]},
            "unappend": {"skus": "A"},
            "unset": "open_return",
        }
    }
    response = await client.post("/api/profile-import", json=profile_body("cy@shop.io", meta=meta))
    assert response.status_code == 200, response.text
    assert by_email(sandbox, "cy@shop.io")["properties"] == {"skus": ["B", "C"], "keep": 1}


async def test_profile_import_finds_profiles_by_external_id_and_id(client: httpx.AsyncClient) -> None:
    created = await client.post("/api/profile-import", json=profile_body("di@shop.io", external_id="c-9"))
    profile_id = created.json()["data"]["id"]
    by_external = await client.post(
        "/api/profile-import", json=profile_body(external_id="c-9", first_name="Di")
    )
    by_id = await client.post(
        "/api/profile-import",
        json={"data": {"type": "profile", "id": profile_id, "attributes": {"last_name": "Ng"}}},
    )
    assert (by_external.status_code, by_id.status_code) == (200, 200), by_id.text
    assert by_id.json()["data"]["attributes"]["first_name"] == "Di"
    assert by_id.json()["data"]["id"] == by_external.json()["data"]["id"] == profile_id


async def test_identifiers_of_two_profiles_conflict_409(client: httpx.AsyncClient) -> None:
    await client.post("/api/profile-import", json=profile_body("ed@shop.io"))
    other = await client.post("/api/profile-import", json=profile_body("fi@shop.io", external_id="c-1"))
    response = await client.post("/api/profile-import", json=profile_body("ed@shop.io", external_id="c-1"))
    error = only_error(response, 409)
    assert error["code"] == "duplicate_profile"
    assert error["meta"]["duplicate_profile_id"] == other.json()["data"]["id"]


async def test_profile_import_over_100kb_is_413(client: httpx.AsyncClient, sandbox: SandboxServer) -> None:
    body = profile_body("gu@shop.io", properties={f"p{i}": "x" * 1000 for i in range(101)})
    error = only_error(await client.post("/api/profile-import", json=body), 413)
    assert "100 KB" in error["detail"]
    assert sandbox.profiles() == []


# ---------------------------------------------------------------- events


async def test_event_is_accepted_and_creates_and_updates_the_profile(
    client: httpx.AsyncClient, sandbox: SandboxServer
) -> None:
    body = event_body(
        "hu@shop.io",
        profile={"first_name": "Hu", "properties": {"returns_active": True}},
        value=42.5,
        value_currency="EUR",
    )
    response = await client.post("/api/events", json=body)
    assert response.status_code == 202 and response.content == b""
    assert by_email(sandbox, "hu@shop.io")["properties"] == {"returns_active": True}
    [event] = sandbox.events()
    assert {
        k: event[k] for k in ("email", "metric", "unique_id", "time", "value", "value_currency", "backfill")
    } == {
        "email": "hu@shop.io",
        "metric": "Return Requested",
        "unique_id": "evt-1",
        "time": WHEN,
        "value": 42.5,
        "value_currency": "EUR",
        "backfill": False,
    }


async def test_unique_id_dedupes_per_profile_and_metric(
    client: httpx.AsyncClient, sandbox: SandboxServer
) -> None:
    sends = [
        event_body("ia@shop.io", unique_id="u1"),
        event_body(
            "ia@shop.io", unique_id="u1", properties={"Changed": True}
        ),  # repeat: accepted, not stored
        event_body("ia@shop.io", unique_id="u1", metric="Refund Issued"),  # other metric
        event_body("jo@shop.io", unique_id="u1"),  # other profile
    ]
    statuses = [(await client.post("/api/events", json=body)).status_code for body in sends]
    assert statuses == [202, 202, 202, 202]
    stored = [(e["email"], e["metric"], e["properties"]) for e in sandbox.events()]
    assert stored == [
        ("ia@shop.io", "Return Requested", {"ReturnId": "R-1"}),
        ("ia@shop.io", "Refund Issued", {"ReturnId": "R-1"}),
        ("jo@shop.io", "Return Requested", {"ReturnId": "R-1"}),
    ]


async def test_event_profile_meta_sits_inside_attributes_per_the_pinned_revision(
    client: httpx.AsyncClient, sandbox: SandboxServer
) -> None:
    patch = {"patch_properties": {"append": {"returned_skus": "SKU-1"}}}
    inside = await client.post("/api/events", json=event_body("km@shop.io", profile={"meta": patch}))
    assert inside.status_code == 202, inside.text
    assert by_email(sandbox, "km@shop.io")["properties"] == {"returned_skus": ["SKU-1"]}
    # The newer SDK revision puts meta beside attributes; revision 2026-07-15 does not know it there.
    beside = event_body("kn@shop.io", unique_id="other")
    beside["data"]["attributes"]["profile"]["data"]["meta"] = patch
    error = only_error(await client.post("/api/events", json=beside), 400)
    assert error["source"]["pointer"] == "/data/attributes/profile/data/meta"


async def test_backfill_flag_is_stored(client: httpx.AsyncClient, sandbox: SandboxServer) -> None:
    await client.post("/api/events", json=event_body("ke@shop.io", unique_id="a", backfill=True))
    await client.post("/api/events", json=event_body("ke@shop.io", unique_id="b"))
    assert [(e["unique_id"], e["backfill"]) for e in sandbox.events()] == [("a", True), ("b", False)]


@pytest.mark.parametrize("when", ["1999-12-31T23:59:59+00:00", "far-future"])
async def test_event_time_outside_klaviyos_range_is_400(client: httpx.AsyncClient, when: str) -> None:
    if when == "far-future":
        when = (datetime.now(UTC) + timedelta(days=400)).isoformat()
    error = only_error(await client.post("/api/events", json=event_body("lu@shop.io", time=when)), 400)
    assert error["source"]["pointer"] == "/data/attributes/time"


# ---------------------------------------------------------------- validation


def _deep(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(levels - 1):
        value = {"n": value}
    return value


INVALID_EVENTS = {
    "bad email": (event_body("not-an-email"), "/data/attributes/profile/data/attributes/email"),
    "long email": (event_body("a" * 95 + "@x.io"), "/data/attributes/profile/data/attributes/email"),
    "metric name 128": (
        event_body("m@shop.io", metric="M" * 128),
        "/data/attributes/metric/data/attributes/name",
    ),
    "unique_id 256": (event_body("m@shop.io", unique_id="u" * 256), "/data/attributes/unique_id"),
    "empty unique_id": (event_body("m@shop.io", unique_id=""), "/data/attributes/unique_id"),
    "401 properties": (
        event_body("m@shop.io", properties={f"k{i}": i for i in range(401)}),
        "/data/attributes/properties",
    ),
    "nesting 11": (
        event_body("m@shop.io", properties={"d": _deep(10)}),
        "/data/attributes/properties/d/n/n/n/n/n/n/n/n/n",
    ),
    "array 4001": (
        event_body("m@shop.io", properties={"a": list(range(4001))}),
        "/data/attributes/properties/a",
    ),
    "string over 100KB": (
        event_body("m@shop.io", properties={"s": "x" * 100_001}),
        "/data/attributes/properties/s",
    ),
    "value not a number": (event_body("m@shop.io", value="12.50"), "/data/attributes/value"),
    "naive time": (event_body("m@shop.io", time="2026-05-01T10:00:00"), "/data/attributes/time"),
    "unknown attribute": (event_body("m@shop.io", colour="red"), "/data/attributes/colour"),
    "wrong type": ({"data": {**event_body("m@shop.io")["data"], "type": "evnt"}}, "/data/type"),
}


@pytest.mark.parametrize("case", sorted(INVALID_EVENTS))
async def test_invalid_event_is_400_with_pointer(
    client: httpx.AsyncClient, sandbox: SandboxServer, case: str
) -> None:
    body, pointer = INVALID_EVENTS[case]
    error = only_error(await client.post("/api/events", json=body), 400)
    assert (error["code"], error["title"]) == ("invalid", "Invalid input.")
    assert error["source"]["pointer"] == pointer, error
    assert sandbox.events() == [] and sandbox.profiles() == []


async def test_missing_required_and_identifier_are_400(client: httpx.AsyncClient) -> None:
    no_metric = event_body("m@shop.io")
    del no_metric["data"]["attributes"]["metric"]
    error = only_error(await client.post("/api/events", json=no_metric), 400)
    assert error["source"]["pointer"] == "/data/attributes/metric"
    error = only_error(await client.post("/api/profile-import", json=profile_body(first_name="Nobody")), 400)
    assert error["source"]["pointer"] == "/data/attributes" and "identifier" in error["detail"]


# ---------------------------------------------------------------- GET /api/profiles


async def test_get_profiles_filters_by_email(client: httpx.AsyncClient) -> None:
    for email in ("na@shop.io", "ole+returns@shop.io", "pi@shop.io"):
        await client.post("/api/profile-import", json=profile_body(email, properties={"n": email[:2]}))
    one = await client.get("/api/profiles", params={"filter": 'equals(email,"ole+returns@shop.io")'})
    assert [p["attributes"]["email"] for p in one.json()["data"]] == ["ole+returns@shop.io"]
    many = await client.get(
        "/api/profiles", params={"filter": 'any(email,["na@shop.io","pi@shop.io","zz@shop.io"])'}
    )
    assert sorted(p["attributes"]["properties"]["n"] for p in many.json()["data"]) == ["na", "pi"]
    # An unencoded '+' is a space in a query string, so the filter finds nobody: as on Klaviyo.
    raw = await client.get('/api/profiles?filter=equals(email,"ole+returns@shop.io")')
    assert raw.status_code == 200 and raw.json()["data"] == []


async def test_get_profiles_paginates_with_links_next(client: httpx.AsyncClient) -> None:
    emails = {f"page{i:02d}@shop.io" for i in range(25)}
    for email in sorted(emails):
        await client.post("/api/profile-import", json=profile_body(email))
    seen: list[str] = []
    url: str | None = "/api/profiles?page[size]=10"
    pages = 0
    while url:
        body = (await client.get(url)).json()
        seen += [p["attributes"]["email"] for p in body["data"]]
        assert (body["links"]["prev"] is None) == (pages == 0)
        url, pages = body["links"]["next"], pages + 1
    assert pages == 3 and len(seen) == 25 and set(seen) == emails


@pytest.mark.parametrize(
    "query", ["page[size]=0", "page[size]=101", "page[cursor]=nonsense", "filter=greater-than(x,1)"]
)
async def test_get_profiles_bad_query_is_400(client: httpx.AsyncClient, query: str) -> None:
    error = only_error(await client.get(f"/api/profiles?{query}"), 400)
    assert error["source"]["parameter"] == query.split("=")[0]


async def test_get_profiles_honours_fields(client: httpx.AsyncClient) -> None:
    await client.post(
        "/api/profile-import", json=profile_body("qa@shop.io", first_name="Qa", properties={"x": 1})
    )
    body = (await client.get("/api/profiles", params={"fields[profile]": "email,properties"})).json()
    assert body["data"][0]["attributes"] == {"email": "qa@shop.io", "properties": {"x": 1}}


# ---------------------------------------------------------------- bulk profile import


async def test_bulk_import_job_goes_queued_processing_complete(
    client: httpx.AsyncClient, sandbox: SandboxServer
) -> None:
    body = bulk_profiles_body(
        [{"attributes": {"email": f"bulk{i}@shop.io", "properties": {"i": i}}} for i in range(3)]
    )
    response = await client.post("/api/profile-bulk-import-jobs", json=body)
    assert response.status_code == 202, response.text
    job = response.json()["data"]
    assert (job["type"], job["attributes"]["status"], job["attributes"]["total_count"]) == (
        "profile-bulk-import-job",
        "queued",
        3,
    )
    seen: list[str] = []
    done = await wait_job(client, job["id"], seen)
    assert (done["completed_count"], done["failed_count"]) == (3, 0) and done["completed_at"]
    assert seen[-1] == "complete" and set(seen) <= {"queued", "processing", "complete"}
    assert sorted(p["properties"]["i"] for p in sandbox.profiles()) == [0, 1, 2]


async def test_bulk_import_ignores_nulls_but_honours_unset(
    client: httpx.AsyncClient, sandbox: SandboxServer
) -> None:
    await client.post(
        "/api/profile-import",
        json=profile_body("ra@shop.io", first_name="Ra", properties={"a": 1, "b": 2, "c": 3}),
    )
    body = bulk_profiles_body(
        [
            {
                "attributes": {"email": "ra@shop.io", "first_name": None, "properties": {"a": None}},
                "meta": {"patch_properties": {"unset": ["b"]}},
            }
        ]
    )
    job = (await client.post("/api/profile-bulk-import-jobs", json=body)).json()["data"]
    await wait_job(client, job["id"])
    stored = by_email(sandbox, "ra@shop.io")
    assert stored["first_name"] == "Ra" and stored["properties"] == {"a": 1, "c": 3}


async def test_bulk_import_errors_list_rejected_profiles(
    client: httpx.AsyncClient, sandbox: SandboxServer
) -> None:
    profiles: list[dict[str, Any]] = [{"attributes": {"email": f"good{i}@shop.io"}} for i in range(3)]
    profiles.insert(1, {"attributes": {"email": "bad@@shop"}})
    profiles.append({"attributes": {"email": "worse at shop.io", "properties": {"n": 1}}})
    job = (await client.post("/api/profile-bulk-import-jobs", json=bulk_profiles_body(profiles))).json()[
        "data"
    ]
    done = await wait_job(client, job["id"])
    assert (done["total_count"], done["completed_count"], done["failed_count"]) == (5, 3, 2)
    first = (await client.get(f"/api/profile-bulk-import-jobs/{job['id']}/import-errors?page[size]=1")).json()
    second = (await client.get(first["links"]["next"])).json()
    rows = [row["attributes"] for row in first["data"] + second["data"]]
    assert second["links"]["next"] is None
    assert [row["source"]["pointer"] for row in rows] == [
        "/data/attributes/profiles/data/1/attributes/email",
        "/data/attributes/profiles/data/4/attributes/email",
    ]
    assert rows[1]["original_payload"] == profiles[4] | {"type": "profile"}
    assert sorted(p["email"] for p in sandbox.profiles()) == [
        "good0@shop.io",
        "good1@shop.io",
        "good2@shop.io",
    ]


async def test_bulk_import_over_10000_profiles_is_400(
    client: httpx.AsyncClient, sandbox: SandboxServer
) -> None:
    body = bulk_profiles_body([{"attributes": {"external_id": str(i)}} for i in range(10_001)])
    error = only_error(await client.post("/api/profile-bulk-import-jobs", json=body), 400)
    assert error["source"]["pointer"] == "/data/attributes/profiles/data"
    assert sandbox.store.account("default").jobs == {}


@pytest.mark.parametrize(
    ("profiles", "pointer"),
    [
        ([{"attributes": {"external_id": str(i), "title": "t" * 2_600}} for i in range(2_000)], "/data"),
        (
            [{"attributes": {"email": "big@shop.io", "properties": {"s": "x" * 60_000, "t": "y" * 60_000}}}],
            "/data/attributes/profiles/data/0",
        ),
    ],
    ids=["request over 5 MB", "profile over 100 KB"],
)
async def test_bulk_import_size_limits_are_413(
    client: httpx.AsyncClient, sandbox: SandboxServer, profiles: list[dict[str, Any]], pointer: str
) -> None:
    response = await client.post("/api/profile-bulk-import-jobs", json=bulk_profiles_body(profiles))
    error = only_error(response, 413)
    assert error["source"]["pointer"] == pointer
    assert sandbox.store.account("default").jobs == {}


async def test_unknown_import_job_is_404_and_jobs_are_per_account(client: httpx.AsyncClient) -> None:
    job = (
        await client.post(
            "/api/profile-bulk-import-jobs",
            json=bulk_profiles_body([{"attributes": {"email": "sa@shop.io"}}]),
        )
    ).json()["data"]
    other = {"Authorization": "Klaviyo-API-Key other-key"}
    only_error(await client.get(f"/api/profile-bulk-import-jobs/{job['id']}", headers=other), 404)
    only_error(await client.get("/api/profile-bulk-import-jobs/01NOSUCHJOB"), 404)


# ---------------------------------------------------------------- bulk events


async def test_bulk_events_store_events_and_backfill(
    client: httpx.AsyncClient, sandbox: SandboxServer
) -> None:
    body = bulk_events_body(
        [
            ("ta@shop.io", [event_attributes(unique_id="1"), event_attributes(unique_id="2")]),
            ("ul@shop.io", [event_attributes(unique_id="1", backfill=False)]),
        ],
        backfill=True,
    )
    response = await client.post("/api/event-bulk-create-jobs", json=body)
    assert response.status_code == 202 and response.content == b""
    assert [(e["email"], e["unique_id"], e["backfill"]) for e in sandbox.events()] == [
        ("ta@shop.io", "1", True),
        ("ta@shop.io", "2", True),
        ("ul@shop.io", "1", False),
    ]


async def test_bulk_events_repeated_unique_id_fails_whole_request(
    client: httpx.AsyncClient, sandbox: SandboxServer
) -> None:
    body = bulk_events_body(
        [
            ("va@shop.io", [event_attributes(unique_id="x")]),
            ("wu@shop.io", [event_attributes(unique_id="x")]),
            ("va@shop.io", [event_attributes(unique_id="x")]),
        ]
    )
    error = only_error(await client.post("/api/event-bulk-create-jobs", json=body), 400)
    assert error["source"]["pointer"].endswith("/data/2/attributes/events/data/0/attributes/unique_id")
    assert sandbox.events() == [] and sandbox.profiles() == []


async def test_bulk_events_over_1000_is_400(client: httpx.AsyncClient, sandbox: SandboxServer) -> None:
    body = bulk_events_body([("xe@shop.io", [event_attributes(unique_id=str(i)) for i in range(1001)])])
    only_error(await client.post("/api/event-bulk-create-jobs", json=body), 400)
    assert sandbox.events() == []


# ---------------------------------------------------------------- consent


@pytest.mark.parametrize(
    "path",
    [
        "/api/profile-subscription-bulk-create-jobs",
        "/api/profile-subscription-bulk-delete-jobs",
        "/api/profile-suppression-bulk-create-jobs",
        "/api/profile-suppression-bulk-delete-jobs",
        "/client/subscriptions",
    ],
)
async def test_consent_endpoints_are_403_and_recorded(client: httpx.AsyncClient, path: str) -> None:
    error = only_error(await client.post(path, json={"data": {}}), 403)
    assert "subscriptions:write" in error["detail"]
    violations = (await client.get("/_sandbox/violations")).json()["data"]
    assert [(v["path"], v["kind"]) for v in violations] == [(path, "endpoint")]


@pytest.mark.parametrize(
    "body",
    [
        profile_body("yo@shop.io", subscriptions={"email": {"marketing": {"consent": "SUBSCRIBED"}}}),
        profile_body("yo@shop.io", properties={"$consent": ["email"]}),
        event_body(
            "yo@shop.io", profile={"subscriptions": {"email": {"marketing": {"consent": "SUBSCRIBED"}}}}
        ),
    ],
)
async def test_consent_fields_in_bodies_are_400_and_recorded(
    client: httpx.AsyncClient, sandbox: SandboxServer, body: dict[str, Any]
) -> None:
    path = "/api/events" if body["data"]["type"] == "event" else "/api/profile-import"
    only_error(await client.post(path, json=body), 400)
    violations = (await client.get("/_sandbox/violations")).json()["data"]
    assert [(v["path"], v["kind"]) for v in violations] == [(path, "field")]
    assert sandbox.profiles() == []


# ---------------------------------------------------------------- auth, revision, media type, routes


@pytest.mark.parametrize(
    ("authorization", "code"),
    [
        (None, "not_authenticated"),
        ("Klaviyo-API-Key wrong", "authentication_failed"),
        ("Bearer sandbox-key", "not_authenticated"),
    ],
)
async def test_bad_credentials_are_401(
    client: httpx.AsyncClient, authorization: str | None, code: str
) -> None:
    headers = {k: v for k, v in HEADERS.items() if k != "Authorization"}
    if authorization:
        headers["Authorization"] = authorization
    async with httpx.AsyncClient(base_url=str(client.base_url), headers=headers) as anonymous:
        error = only_error(await anonymous.post("/api/events", json=event_body("za@shop.io")), 401)
    assert error["code"] == code


async def test_missing_revision_is_400(client: httpx.AsyncClient, sandbox: SandboxServer) -> None:
    client.headers.pop("revision")
    error = only_error(await client.post("/api/events", json=event_body("za@shop.io")), 400)
    assert error["source"] == {"parameter": "revision"}
    assert sandbox.events() == []


async def test_content_types(client: httpx.AsyncClient) -> None:
    body = json.dumps(profile_body("zb@shop.io")).encode()
    plain = await client.post("/api/profile-import", content=body, headers={"Content-Type": "text/plain"})
    assert only_error(plain, 415)["code"] == "unsupported_media_type"
    as_json = await client.post(
        "/api/profile-import/", content=body, headers={"Content-Type": "application/json"}
    )
    assert as_json.status_code == 201, as_json.text


async def test_malformed_json_is_400(client: httpx.AsyncClient) -> None:
    only_error(await client.post("/api/events", content=b"{not json"), 400)


async def test_unknown_route_is_404_klaviyo_shaped(client: httpx.AsyncClient) -> None:
    assert only_error(await client.get("/api/metrics"), 404)["code"] == "not_found"


async def test_each_key_is_its_own_account(client: httpx.AsyncClient, sandbox: SandboxServer) -> None:
    other = {"Authorization": "Klaviyo-API-Key other-key"}
    await client.post(
        "/api/profile-import", json=profile_body("zc@shop.io", properties={"who": "other"}), headers=other
    )
    await client.post("/api/profile-import", json=profile_body("zc@shop.io", properties={"who": "default"}))
    assert by_email(sandbox, "zc@shop.io", "other")["properties"] == {"who": "other"}
    assert by_email(sandbox, "zc@shop.io")["properties"] == {"who": "default"}


# ---------------------------------------------------------------- rate limits


async def test_burst_limit_429_with_retry_after_then_recovers(start_sandbox: Starter) -> None:
    sandbox = await start_sandbox(rate_limit_scale=0.1)  # job GETs: 1/s burst, 15/m steady
    async with httpx.AsyncClient(base_url=sandbox.url, headers=HEADERS) as client:
        path = "/api/profile-bulk-import-jobs/none"
        first = await client.get(path)
        assert first.status_code == 404
        assert (first.headers["RateLimit-Limit"], first.headers["RateLimit-Remaining"]) == ("15", "14")
        assert 1 <= int(first.headers["RateLimit-Reset"]) <= 60
        throttled = await client.get(path)
        error = only_error(throttled, 429)
        assert (error["code"], error["title"]) == ("throttled", "Request was throttled.")
        assert throttled.headers["Retry-After"] == "1" and "RateLimit-Limit" not in throttled.headers
        other = {"Authorization": "Klaviyo-API-Key other-key"}
        assert (await client.get(path, headers=other)).status_code == 404  # another account's budget
        assert (await client.get("/api/profiles")).status_code == 200  # another endpoint's budget

        async def allowed_again() -> bool:
            return (await client.get(path)).status_code == 404

        await eventually(allowed_again, "the burst window to reset", within=3)


async def test_steady_limit_retry_after_counts_down_the_minute(start_sandbox: Starter) -> None:
    sandbox = await start_sandbox(rate_limit_scale=0.01)  # bulk endpoints: 1/s and 1/m
    async with httpx.AsyncClient(base_url=sandbox.url, headers=HEADERS) as client:
        body = bulk_events_body([("zd@shop.io", [event_attributes()])])
        assert (await client.post("/api/event-bulk-create-jobs", json=body)).status_code == 202
        throttled = await client.post(
            "/api/event-bulk-create-jobs", json=bulk_events_body([("ze@shop.io", [event_attributes()])])
        )
        only_error(throttled, 429)
        assert 55 <= int(throttled.headers["Retry-After"]) <= 60
    assert [e["email"] for e in sandbox.events()] == ["zd@shop.io"]


async def test_scale_zero_disables_limits(client: httpx.AsyncClient) -> None:
    statuses = {(await client.get("/api/profile-bulk-import-jobs/x")).status_code for _ in range(30)}
    assert statuses == {404}


# ---------------------------------------------------------------- faults


async def add_fault(client: httpx.AsyncClient, **fault: Any) -> dict[str, Any]:
    response = await client.post("/_sandbox/faults", json=fault)
    assert response.status_code == 201, response.text
    return dict(response.json()["data"])


async def test_status_fault_by_count_stores_nothing(
    client: httpx.AsyncClient, sandbox: SandboxServer
) -> None:
    await add_fault(client, status=503, count=2)
    statuses = [
        (await client.post("/api/events", json=event_body("fa@shop.io", unique_id=str(i)))).status_code
        for i in range(3)
    ]
    assert statuses == [503, 503, 202]
    assert [e["unique_id"] for e in sandbox.events()] == ["2"]
    log = (await client.get("/_sandbox/requests")).json()["data"]
    assert [(r["status"], r["fault"] is not None) for r in log] == [(503, True), (503, True), (202, False)]


async def test_status_fault_by_seconds_expires(client: httpx.AsyncClient) -> None:
    await add_fault(client, status=500, seconds=1, endpoint="/api/profile-import")
    first = await client.post("/api/profile-import", json=profile_body("fb@shop.io"))
    assert only_error(first, 500)["code"] == "error"

    async def healed() -> bool:
        return (await client.post("/api/profile-import", json=profile_body("fb@shop.io"))).status_code in (
            200,
            201,
        )

    await eventually(healed, "the timed fault to expire", within=3)


async def test_429_fault_carries_retry_after(client: httpx.AsyncClient) -> None:
    await add_fault(client, status=429, retry_after=2, count=1)
    response = await client.post("/api/events", json=event_body("fc@shop.io"))
    assert only_error(response, 429)["code"] == "throttled" and response.headers["Retry-After"] == "2"
    assert (await client.post("/api/events", json=event_body("fc@shop.io"))).status_code == 202


async def test_delay_fault_is_slow_but_succeeds(client: httpx.AsyncClient, sandbox: SandboxServer) -> None:
    await add_fault(client, delay=0.5, count=1)
    started = time.monotonic()
    response = await client.post("/api/events", json=event_body("fd@shop.io"))
    assert response.status_code == 202 and time.monotonic() - started >= 0.5
    assert len(sandbox.events()) == 1


async def test_drop_fault_closes_the_connection(client: httpx.AsyncClient, sandbox: SandboxServer) -> None:
    fault = await add_fault(client, drop=True, count=1)
    with pytest.raises(httpx.RemoteProtocolError):
        await client.post("/api/events", json=event_body("fe@shop.io"))
    assert sandbox.events() == []
    assert (await client.post("/api/events", json=event_body("fe@shop.io"))).status_code == 202
    log = (await client.get("/_sandbox/requests")).json()["data"]
    assert (log[0]["status"], log[0]["fault"]) == (None, fault["id"])


async def test_email_fault_gives_duplicate_profile(client: httpx.AsyncClient, sandbox: SandboxServer) -> None:
    await add_fault(client, status=409, email="FF@shop.io")
    error = only_error(await client.post("/api/profile-import", json=profile_body("ff@shop.io")), 409)
    assert error["code"] == "duplicate_profile" and error["meta"]["duplicate_profile_id"]
    assert (await client.post("/api/profile-import", json=profile_body("fg@shop.io"))).status_code == 201
    assert [p["email"] for p in sandbox.profiles()] == ["fg@shop.io"]


async def test_endpoint_filter_and_clearing(client: httpx.AsyncClient) -> None:
    await add_fault(client, status=503, endpoint="/api/events")
    assert (await client.post("/api/profile-import", json=profile_body("fh@shop.io"))).status_code == 201
    only_error(await client.post("/api/events", json=event_body("fh@shop.io")), 503)
    assert (await client.delete("/_sandbox/faults")).json()["data"]["cleared"] == 1
    assert (await client.post("/api/events", json=event_body("fh@shop.io"))).status_code == 202


@pytest.mark.parametrize(
    "fault",
    [
        {},
        {"status": 200},
        {"status": 503, "count": 0},
        {"drop": True, "status": 503},
        {"status": 503, "colour": "red"},
        {"delay": -1},
    ],
)
async def test_nonsense_faults_are_refused(client: httpx.AsyncClient, fault: dict[str, Any]) -> None:
    response = await client.post("/_sandbox/faults", json=fault)
    assert response.status_code == 400 and response.json()["error"]
    assert (await client.get("/_sandbox/faults")).json()["data"] == []


# ---------------------------------------------------------------- inspection and admin


async def test_inspection_endpoints(client: httpx.AsyncClient) -> None:
    await client.post("/api/events", json=event_body("ia@shop.io", value=9.5, value_currency="USD"))
    events = (await client.get("/_sandbox/events", params={"account": "default"})).json()["data"]
    assert {
        "email",
        "metric",
        "unique_id",
        "time",
        "value",
        "value_currency",
        "properties",
        "backfill",
    } <= set(events[0])
    profiles = (await client.get("/_sandbox/profiles", params={"email": "ia@shop.io"})).json()["data"]
    assert [p["email"] for p in profiles] == ["ia@shop.io"]
    log = (await client.get("/_sandbox/requests")).json()["data"]
    assert [(r["account"], r["method"], r["path"], r["status"], r["items"]) for r in log] == [
        ("default", "POST", "/api/events", 202, 1)
    ]
    assert (await client.get("/_sandbox/events", params={"account": "nobody"})).status_code == 404


async def test_planted_properties_show_up_as_drift(client: httpx.AsyncClient) -> None:
    await client.post("/api/profile-import", json=profile_body("ib@shop.io", properties={"returns_count": 2}))
    planted = await client.post(
        "/_sandbox/profiles", json={"email": "ib@shop.io", "properties": {"returns_count": 7}}
    )
    assert planted.status_code == 200, planted.text
    read = (await client.get("/api/profiles", params={"filter": 'equals(email,"ib@shop.io")'})).json()
    assert read["data"][0]["attributes"]["properties"] == {"returns_count": 7}


async def test_reset_wipes_one_account_or_everything(
    client: httpx.AsyncClient, sandbox: SandboxServer
) -> None:
    other = {"Authorization": "Klaviyo-API-Key other-key"}
    await client.post("/api/profile-import", json=profile_body("ic@shop.io"))
    await client.post("/api/profile-import", json=profile_body("ic@shop.io"), headers=other)
    await add_fault(client, status=503, endpoint="/api/metrics")
    assert (await client.post("/_sandbox/reset", json={"account": "other"})).status_code == 200
    assert sandbox.profiles("other") == [] and len(sandbox.profiles()) == 1
    await client.post("/_sandbox/reset")
    assert sandbox.profiles() == [] and (await client.get("/_sandbox/faults")).json()["data"] == []
    assert (await client.get("/_sandbox/requests")).json()["data"] == []


# ---------------------------------------------------------------- schemas, reference bodies, serve()


def test_committed_schemas_equal_a_fresh_extraction(tmp_path: Path) -> None:
    out = tmp_path / "klaviyo_schemas.json"
    subprocess.run(
        [sys.executable, str(REPO / "scripts" / "extract_klaviyo_schemas.py"), "--out", str(out)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    committed = REPO / "klaviyo_sandbox" / "klaviyo_schemas.json"
    assert out.read_text() == committed.read_text(), "rerun scripts/extract_klaviyo_schemas.py and commit"


@pytest.mark.parametrize(
    ("example", "path", "status"),
    [
        ("profile_import.json", "/api/profile-import", 201),
        ("create_event.json", "/api/events", 202),
        ("bulk_create_events.json", "/api/event-bulk-create-jobs", 202),
        ("bulk_import_profiles.json", "/api/profile-bulk-import-jobs", 202),
    ],
)
async def test_reference_examples_are_accepted(
    client: httpx.AsyncClient, example: str, path: str, status: int
) -> None:
    body = json.loads((EXAMPLES / example).read_text())
    response = await client.post(path, json=body)
    assert response.status_code == status, response.text


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_serve_runs_until_sigterm() -> None:
    port = _free_port()
    code = f"from klaviyo_sandbox import serve; serve('127.0.0.1', {port}, {{'k1': 'default'}}, 1.0)"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, cwd=REPO, stdout=asyncio.subprocess.PIPE, env=dict(os.environ)
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), timeout=20)
        assert f"http://127.0.0.1:{port}" in line.decode()
        headers = {**HEADERS, "Authorization": "Klaviyo-API-Key k1"}
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=headers) as client:
            assert (
                await client.post("/api/profile-import", json=profile_body("sv@shop.io"))
            ).status_code == 201
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), timeout=10) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
