"""/_sandbox/counts over real HTTP: sizes of what the sandbox holds and of its request log,
without the contents (what a 1,000,000-event benchmark can afford to ask for)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from klaviyo_sandbox import SandboxServer
from tests.klaviyo_sandbox.test_sandbox_server import (
    HEADERS,
    KEYS,
    bulk_events_body,
    bulk_profiles_body,
    event_attributes,
    event_body,
    profile_body,
    wait_job,
)


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    server = SandboxServer(api_keys=KEYS, rate_limit_scale=0)
    await server.start()
    try:
        async with httpx.AsyncClient(base_url=server.url, headers=HEADERS, timeout=10) as http:
            yield http
    finally:
        await server.stop()


async def counts(client: httpx.AsyncClient, **params: str) -> dict[str, object]:
    response = await client.get("/_sandbox/counts", params=params)
    assert response.status_code == 200, response.text
    data: dict[str, object] = response.json()["data"]
    return data


async def test_counts_of_an_empty_sandbox(client: httpx.AsyncClient) -> None:
    assert await counts(client) == {
        "account": "default", "profiles": 0, "events": 0, "jobs": 0, "data_source_records": 0,
        "violations": 0,
        "requests": {"total": 0, "by_endpoint": {}, "by_status": {}, "items_by_endpoint": {},
                     "log_full": False},
    }


async def test_counts_follow_stores_and_group_requests_by_route(client: httpx.AsyncClient) -> None:
    await client.post("/api/profile-import", json=profile_body("ca@shop.io"))
    await client.post("/api/events", json=event_body("ca@shop.io", unique_id="e-1"))
    await client.post("/api/events/", json=event_body("ca@shop.io", unique_id="e-1"))  # deduplicated
    bulk = bulk_events_body([("cb@shop.io", [event_attributes(unique_id="e-2"),
                                             event_attributes(unique_id="e-3")])], backfill=True)
    assert (await client.post("/api/event-bulk-create-jobs", json=bulk)).status_code == 202
    job = await client.post("/api/profile-bulk-import-jobs", json=bulk_profiles_body(
        [{"attributes": {"email": "cc@shop.io"}}, {"attributes": {"email": "cd@shop.io"}}]
    ))
    assert job.status_code == 202, job.text
    await wait_job(client, job.json()["data"]["id"])
    data = await counts(client)
    requests = data["requests"]
    assert isinstance(requests, dict)
    polls = requests["by_endpoint"]["GET /api/profile-bulk-import-jobs/{job_id}"]
    assert polls >= 1
    assert (data["profiles"], data["events"], data["jobs"]) == (4, 3, 1)
    assert requests["by_endpoint"] == {
        "GET /api/profile-bulk-import-jobs/{job_id}": polls,
        "POST /api/event-bulk-create-jobs": 1,
        "POST /api/events": 2,
        "POST /api/profile-bulk-import-jobs": 1,
        "POST /api/profile-import": 1,
    }
    assert requests["items_by_endpoint"]["POST /api/event-bulk-create-jobs"] == 2
    assert requests["items_by_endpoint"]["POST /api/profile-bulk-import-jobs"] == 2
    assert requests["total"] == 5 + polls
    assert sum(requests["by_status"].values()) == requests["total"]


async def test_counts_per_account(client: httpx.AsyncClient) -> None:
    other = {"Authorization": "Klaviyo-API-Key other-key"}
    await client.post("/api/profile-import", json=profile_body("ce@shop.io"))
    await client.post("/api/profile-import", json=profile_body("cf@shop.io"), headers=other)
    await client.post("/api/profile-import", json=profile_body("cg@shop.io"), headers=other)
    mine, theirs, everyone = (await counts(client, account="default"), await counts(client, account="other"),
                              await counts(client))
    assert (mine["profiles"], theirs["profiles"], everyone["profiles"]) == (1, 2, 1)
    assert [c["requests"]["total"] for c in (mine, theirs, everyone)] == [1, 2, 3]  # type: ignore[index]
    assert (await client.get("/_sandbox/counts", params={"account": "nobody"})).status_code == 404
