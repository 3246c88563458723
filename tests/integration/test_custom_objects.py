"""Returns as Klaviyo custom objects, end to end: a worker with RETURNSYNC_CUSTOM_OBJECTS=true
over the real broker and the real sandbox keeps one record per return in step with the state,
finds its data source again after a restart, never lets an older state overwrite a newer record;
a replay rebuilds every record; and a worker with the default (off) sends nothing to those
endpoints."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import orjson
import pytest

from streams.demo import demo_events
from streams.events import Customer, EventType, ReturnEvent, ReturnItem
from streams.outbox import SyncRecord, encode_sync_record
from streams.return_records import all_return_records
from tests.agents.klaviyo.test_delivery_plan import sync_records
from tests.integration.conftest import WorkerFactory
from tests.integration.harness import SANDBOX_KEY, SandboxThread, expected_klaviyo, wait_until
from tests.integration.test_delivery import converged, sandbox_for
from tests.integration.test_delivery_versions import SYNC_TOPIC, marker
from tests.integration.test_replay import cli_env, returnsync

ON = {"RETURNSYNC_CUSTOM_OBJECTS": "true"}
TITLE = "returnsync returns"


@pytest.fixture
def sandbox(request: pytest.FixtureRequest) -> Iterator[SandboxThread]:
    yield from sandbox_for(request)


def data_sources(sandbox: SandboxThread) -> list[dict[str, Any]]:
    return list(sandbox.admin("GET", "data-sources", params={"key": "id"}))


def stored_records(sandbox: SandboxThread) -> dict[str, dict[str, Any]]:
    """The latest record per object id, as an object type keyed by `id` shows them."""
    sources = data_sources(sandbox)
    return dict(sources[0]["latest"]) if sources else {}


def expected_records(events: list[ReturnEvent]) -> dict[str, dict[str, Any]]:
    """Every return's record from the reducer's final state, as JSON (money a number). Without
    `version`: a return not touched again keeps the version it was written at."""
    states = expected_klaviyo(events, item_lines=True).states  # as the worker folds with the feature on
    return {record.key: _without_version(orjson.loads(orjson.dumps(dict(record.record), default=float)))
            for state in states.values() for record in all_return_records(state)}


def _without_version(record: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in record.items() if key != "version"}


def record_differences(sandbox: SandboxThread, wanted: dict[str, dict[str, Any]]) -> list[str]:
    got = {key: _without_version(record) for key, record in stored_records(sandbox).items()}
    problems = [f"{key}: missing" for key in wanted.keys() - got.keys()]
    problems += [f"{key}: unexpected" for key in got.keys() - wanted.keys()]
    problems += [f"{key}: expected {wanted[key]}, got {got[key]}"
                 for key in wanted.keys() & got.keys() if wanted[key] != got[key]]
    return problems


def records_converged(sandbox: SandboxThread, events: list[ReturnEvent], *, within: float) -> None:
    wanted = expected_records(events)
    differences: list[str] = []

    def equal() -> bool:
        differences[:] = record_differences(sandbox, wanted)
        return not differences

    try:
        wait_until(equal, within=within, what=f"{len(wanted)} return records equal to the reducer's")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; first differences: {differences[:3]}") from None


def requests_to(sandbox: SandboxThread, method: str, path: str) -> int:
    return sum(1 for r in sandbox.admin("GET", "requests")
               if r["method"] == method and r["path"].rstrip("/") == path)


def a_new_return(customer: Customer) -> list[ReturnEvent]:
    """A new return of two lines for `customer`: requested, then received, refunded and closed,
    over the last four hours (never ahead of ingestion: that is refused as `future_time`)."""
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=4)
    items = (ReturnItem(sku="JKT-OLV-M", product_name="Field Jacket", variant_name="Olive / M", quantity=1,
                        value=Decimal("129.00"), reason="too_large", outcome="refund"),
             ReturnItem(sku="SCARF-GRY", product_name="Wool Scarf", quantity=2, value=Decimal("24.50"),
                        reason="changed_mind", outcome="refund"))

    def event(n: int, type: EventType, **fields: Any) -> ReturnEvent:
        return ReturnEvent(event_id=f"objects:{n}", type=type, occurred_at=start + timedelta(hours=n),
                           customer=customer, source="loop", return_id="LOOP-77001", order_ref="#88120",
                           currency="USD", **fields)

    return [
        event(0, EventType.RETURN_REQUESTED, items=items, amount=Decimal("178.00")),
        event(1, EventType.RETURN_RECEIVED),
        event(2, EventType.REFUND_ISSUED, amount=Decimal("178.00"), outcome=None),
        event(3, EventType.RETURN_CLOSED),
    ]


def test_records_follow_the_returns_and_the_data_source_is_found_again_after_a_restart(
    start_worker: WorkerFactory, publish: Callable[..., None], sandbox: SandboxThread,
) -> None:
    events = demo_events(30, seed=41)
    worker = start_worker(env=ON)
    publish(events)
    records_converged(sandbox, events, within=120)
    assert [source["title"] for source in data_sources(sandbox)] == [TITLE]

    sample = events[-1].customer
    new = a_new_return(sample)
    publish(new[:1])
    records_converged(sandbox, [*events, *new[:1]], within=60)
    key = f"default/{new[0].return_id}"
    before = stored_records(sandbox)[key]

    worker.stop(within=20)
    start_worker(index=1, env=ON)
    publish(new[1:])
    records_converged(sandbox, [*events, *new], within=90)
    after = stored_records(sandbox)[key]

    assert [source["title"] for source in data_sources(sandbox)] == [TITLE]
    assert requests_to(sandbox, "POST", "/api/data-sources") == 1
    assert requests_to(sandbox, "GET", "/api/data-sources") == 2  # each worker looked it up once
    assert (before["status"], before["open"]) == ("requested", True)
    assert (after["status"], after["open"], after["outcome"], after["refund_total"]) == (
        "closed", False, "refund", 178.0)
    assert after["closed_at"] == after["last_changed_at"] and "closed_at" not in before
    print("\nsample customer's return record before:", json.dumps(before, indent=2, sort_keys=True))
    print("after:", json.dumps(after, indent=2, sort_keys=True))


def older_record(records: list[SyncRecord]) -> SyncRecord:
    """A sync record whose return's record differs from that return's latest one."""
    newest: dict[str, SyncRecord] = {}
    for record in records:
        newest[record.customer_key] = record
    for record in records:
        final = newest[record.customer_key]
        return_id = record.event.return_id
        if (return_id and record.state.version < final.state.version
                and record.state.returns.get(return_id) is not None
                and record.state.returns[return_id].counted
                and record.state.returns[return_id].status != final.state.returns[return_id].status):
            return record
    raise AssertionError("no return changed over the demo")


def test_an_older_state_never_overwrites_a_newer_record(
    start_worker: WorkerFactory, publish: Callable[..., None], sandbox: SandboxThread,
) -> None:
    events = demo_events(30, seed=43)
    stale = older_record(sync_records(events, item_lines=True))
    key = stale.customer_key
    start_worker(env=ON)
    publish(events)
    records_converged(sandbox, events, within=120)
    ingested = sum(len(source["records"]) for source in data_sources(sandbox))

    # A zombie appends the older state late; a marker behind it on its partition shows it was read.
    after = marker(events, key, key, "objects")
    publish(raw=[(key.encode(), encode_sync_record(stale))], topic=SYNC_TOPIC)
    publish([after])
    converged(expected_klaviyo([*events, after]), sandbox, within=60)

    records_converged(sandbox, events, within=5)
    assert sum(len(source["records"]) for source in data_sources(sandbox)) == ingested


def test_off_by_default_nothing_goes_to_the_custom_object_endpoints(
    start_worker: WorkerFactory, publish: Callable[..., None], sandbox: SandboxThread,
) -> None:
    events = demo_events(10, seed=44)
    start_worker()
    publish(events)
    converged(expected_klaviyo(events), sandbox, within=90)
    touched = {r["path"] for r in sandbox.admin("GET", "requests") if "data-source" in r["path"]}
    assert touched == set()
    assert data_sources(sandbox) == []


def test_replay_rebuilds_every_record_from_the_final_states(
    publish: Callable[..., None], sandbox: SandboxThread, bootstrap_servers: str, prefix: str,
) -> None:
    events = demo_events(40, seed=45)
    publish(events)
    env = {**cli_env(bootstrap_servers, sandbox, prefix), **ON}
    done = returnsync(["replay", "--from-beginning", "--batch-size", "50"], env)
    assert done.returncode == 0, done.stderr[-3000:]

    assert record_differences(sandbox, expected_records(events)) == []
    final = {state.customer_key: state.version for state in expected_klaviyo(events).states.values()}
    stored = [stored["record"] for source in data_sources(sandbox) for stored in source["records"]]
    assert len(stored) == len(expected_records(events)), "one record per return, each written once"
    assert all(record["version"] == final[f"default/{record['email']}"] for record in stored)

    again = returnsync(["replay", "--from-beginning"], env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert sum(len(source["records"]) for source in data_sources(sandbox)) == len(stored)


def plant_record(sandbox: SandboxThread, source_id: str, record: dict[str, Any]) -> None:
    """Another writer changes a return's object behind returnsync's back."""
    body = {"data": {"type": "data-source-record-create-job",
                     "attributes": {"data-source-record": {"data": {"type": "data-source-record",
                                                                    "attributes": {"record": record}}}},
                     "relationships": {"data-source": {"data": {"type": "data-source", "id": source_id}}}}}
    headers = {"Authorization": f"Klaviyo-API-Key {SANDBOX_KEY}", "revision": "2026-07-15",
               "Content-Type": "application/vnd.api+json"}
    response = httpx.post(f"{sandbox.url}/api/data-source-record-create-jobs", json=body, headers=headers)
    assert response.status_code == 204, response.text


def test_dry_run_reports_record_drift_and_a_replay_rewrites_it(
    publish: Callable[..., None], sandbox: SandboxThread, bootstrap_servers: str, prefix: str,
) -> None:
    events = demo_events(20, seed=46)
    publish(events)
    env = {**cli_env(bootstrap_servers, sandbox, prefix), **ON}
    rebuilt = returnsync(["replay", "--from-beginning"], env)
    assert rebuilt.returncode == 0, rebuilt.stderr[-3000:]
    returns = len(expected_records(events))

    unmapped = returnsync(["replay", "--from-beginning", "--dry-run"], env)
    assert unmapped.returncode == 1, unmapped.stdout + unmapped.stderr[-2000:]
    assert "not compared: account default has no object type titled 'Return'" in unmapped.stdout

    [source] = data_sources(sandbox)
    sandbox.admin("POST", "object-types", json={"title": "Return", "data_source": source["id"], "key": "id"})
    clean = returnsync(["replay", "--from-beginning", "--dry-run"], env)
    assert clean.returncode == 0, clean.stdout + clean.stderr[-2000:]
    assert f"compared {returns} return records: 0 drifted" in clean.stdout

    key, record = sorted(stored_records(sandbox).items())[0]
    plant_record(sandbox, source["id"], {**record, "status": "cancelled", "value": 1.5, "note": "x"})
    drifted = returnsync(["replay", "--from-beginning", "--dry-run", "--json", "--show-customers"], env)
    assert drifted.returncode == 1, drifted.stdout + drifted.stderr[-2000:]
    document = orjson.loads(drifted.stdout)["records"]
    assert (document["compared"], document["drifted"]) == (returns, 1)
    assert document["per_field"] == {"status": 1, "value": 1, "note": 1}
    assert {example["return"] for example in document["examples"]} == {key}
    assert {example["customer"] for example in document["examples"]} == {record["email"]}

    fixed = returnsync(["replay", "--from-beginning", "--name", "records"], env)
    assert fixed.returncode == 0, fixed.stderr[-3000:]
    again = returnsync(["replay", "--from-beginning", "--dry-run"], env)
    assert again.returncode == 0, again.stdout + again.stderr[-2000:]
    assert f"compared {returns} return records: 0 drifted" in again.stdout
