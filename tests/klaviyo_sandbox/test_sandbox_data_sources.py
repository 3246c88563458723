"""The sandbox's Custom Objects endpoints over real HTTP: data sources, record ingestion (single
and bulk), validation against the pinned spec, rate limits, and what tests can read back."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from klaviyo_sandbox import SandboxServer

HEADERS = {
    "Authorization": "Klaviyo-API-Key sandbox-key",
    "revision": "2026-07-15",
    "Content-Type": "application/vnd.api+json",
    "Accept": "application/vnd.api+json",
}


@pytest.fixture
async def sandbox() -> AsyncIterator[SandboxServer]:
    server = SandboxServer(rate_limit_scale=0)
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def client(sandbox: SandboxServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=sandbox.url, headers=HEADERS, timeout=10) as http:
        yield http


def source_body(title: str) -> dict[str, Any]:
    return {"data": {"type": "data-source", "attributes": {"title": title}}}


def record(record: dict[str, Any]) -> dict[str, Any]:
    return {"type": "data-source-record", "attributes": {"record": record}}


def relationship(source_id: str) -> dict[str, Any]:
    return {"data-source": {"data": {"type": "data-source", "id": source_id}}}


def single_body(source_id: str, fields: dict[str, Any]) -> dict[str, Any]:
    return {"data": {"type": "data-source-record-create-job",
                     "attributes": {"data-source-record": {"data": record(fields)}},
                     "relationships": relationship(source_id)}}


def bulk_body(source_id: str, records: list[dict[str, Any]]) -> dict[str, Any]:
    return {"data": {"type": "data-source-record-bulk-create-job",
                     "attributes": {"data-source-records": {"data": [record(r) for r in records]}},
                     "relationships": relationship(source_id)}}


async def create_source(client: httpx.AsyncClient, title: str = "returnsync returns") -> str:
    response = await client.post("/api/data-sources", json=source_body(title))
    assert response.status_code == 201, response.text
    source_id: str = response.json()["data"]["id"]
    return source_id


async def stored(client: httpx.AsyncClient, key: str | None = None) -> list[dict[str, Any]]:
    query = f"?key={key}" if key else ""
    sources: list[dict[str, Any]] = (await client.get(f"/_sandbox/data-sources{query}")).json()["data"]
    return sources


async def test_data_source_is_created_listed_and_read(client: httpx.AsyncClient) -> None:
    source_id = await create_source(client)
    listed = (await client.get("/api/data-sources")).json()["data"]
    assert [(s["id"], s["attributes"]["title"]) for s in listed] == [(source_id, "returnsync returns")]
    assert listed[0]["attributes"] == {"title": "returnsync returns", "visibility": "private",
                                       "description": "", "namespace": "custom-objects"}
    one = (await client.get(f"/api/data-sources/{source_id}")).json()["data"]
    assert one["id"] == source_id


async def test_a_second_data_source_with_the_same_title_is_409(client: httpx.AsyncClient) -> None:
    await create_source(client)
    again = await client.post("/api/data-sources", json=source_body("returnsync returns"))
    assert again.status_code == 409
    assert len((await client.get("/api/data-sources")).json()["data"]) == 1


async def test_data_source_body_is_validated_against_the_spec(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/data-sources", json={"data": {"type": "data-source",
                                                                      "attributes": {"name": "x"}}})
    assert response.status_code == 400
    pointers = {error["source"]["pointer"] for error in response.json()["errors"]}
    assert pointers == {"/data/attributes/title", "/data/attributes/name"}


async def test_records_are_stored_in_order_and_the_latest_per_key_is_readable(
    client: httpx.AsyncClient,
) -> None:
    source_id = await create_source(client)
    bulk = await client.post("/api/data-source-record-bulk-create-jobs", json=bulk_body(
        source_id, [{"return_id": "r1", "status": "requested"}, {"return_id": "r2", "status": "requested"}]))
    assert bulk.status_code == 204, bulk.text
    single = await client.post("/api/data-source-record-create-jobs",
                               json=single_body(source_id, {"return_id": "r1", "status": "closed"}))
    assert single.status_code == 204, single.text
    [source] = await stored(client, key="return_id")
    assert [(r["record"]["return_id"], r["via"]) for r in source["records"]] == [
        ("r1", "bulk"), ("r2", "bulk"), ("r1", "single")]
    assert {key: value["status"] for key, value in source["latest"].items()} == {
        "r1": "closed", "r2": "requested"}


async def test_records_for_an_unknown_data_source_are_404(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/data-source-record-create-jobs", json=single_body("nope", {"a": 1}))
    assert response.status_code == 404
    assert response.json()["errors"][0]["source"]["pointer"] == "/data/relationships/data-source/data/id"


async def test_a_bad_record_body_refuses_the_whole_request(client: httpx.AsyncClient) -> None:
    source_id = await create_source(client)
    body = bulk_body(source_id, [{"return_id": "r1"}])
    body["data"]["attributes"]["data-source-records"]["data"].append({"type": "data-source-record"})
    response = await client.post("/api/data-source-record-bulk-create-jobs", json=body)
    assert response.status_code == 400
    assert response.json()["errors"][0]["source"]["pointer"] == (
        "/data/attributes/data-source-records/data/1/attributes")
    assert (await stored(client))[0]["records"] == []


async def test_more_than_500_records_is_400(client: httpx.AsyncClient) -> None:
    source_id = await create_source(client)
    response = await client.post("/api/data-source-record-bulk-create-jobs",
                                 json=bulk_body(source_id, [{"n": n} for n in range(501)]))
    assert response.status_code == 400
    assert (await stored(client))[0]["records"] == []


async def test_bulk_records_are_rate_limited_at_the_spec_limits() -> None:
    server = SandboxServer(rate_limit_scale=1)  # bulk: 3/s burst, 15/m steady
    await server.start()
    try:
        async with httpx.AsyncClient(base_url=server.url, headers=HEADERS, timeout=10) as client:
            source_id = await create_source(client)
            statuses = [(await client.post("/api/data-source-record-bulk-create-jobs",
                                           json=bulk_body(source_id, [{"n": n}]))).status_code
                        for n in range(4)]
            assert statuses[:3] == [204, 204, 204]
            assert statuses[3] == 429
    finally:
        await server.stop()


async def test_an_object_type_over_the_source_serves_the_latest_record_per_key(
    client: httpx.AsyncClient,
) -> None:
    source_id = await create_source(client)
    await client.post("/api/data-source-record-bulk-create-jobs", json=bulk_body(
        source_id, [{"id": "t/r1", "status": "requested"}, {"id": "t/r2", "status": "requested"}]))
    await client.post("/api/data-source-record-create-jobs",
                      json=single_body(source_id, {"id": "t/r1", "status": "closed"}))
    made = await client.post("/_sandbox/object-types", json={"title": "Return", "data_source": source_id,
                                                             "key": "id"})
    assert made.status_code == 201, made.text
    types = (await client.get("/api/object-types")).json()["data"]
    assert [(t["id"], t["attributes"]["title"]) for t in types] == [(made.json()["data"]["id"], "Return")]
    first = await client.get(f"/api/object-types/{types[0]['id']}/object-records", params={"page[size]": 1})
    assert first.status_code == 200, first.text
    second = await client.get(first.json()["links"]["next"])
    records = [*first.json()["data"], *second.json()["data"]]
    assert [(r["id"].split(":::")[1], r["attributes"]["record_properties"]["status"]) for r in records] == [
        ("t/r1", "closed"), ("t/r2", "requested")]
    assert (await client.get("/api/object-types/nope/object-records")).status_code == 404
