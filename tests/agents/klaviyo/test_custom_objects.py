"""Return records through the real delivery engine and the real sandbox (in process): the data
source found or created once, singles or bulk by the budget, the newest state only, refusals
dead-lettered once with Klaviyo's detail. And the pure planning: 500 records, 4 MB a request."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import orjson
import pytest

from agents.klaviyo.accounts import KlaviyoAccount
from agents.klaviyo.channels import Channel, Channels
from agents.klaviyo.client import RetryPolicy
from agents.klaviyo.custom_objects import BULK_RECORDS_MAX, PAYLOAD_MAX, plan_records, record_writes
from agents.klaviyo.delivery import Delivery
from agents.klaviyo.versions import MemoryVersions
from klaviyo_sandbox import SandboxServer
from streams.demo import demo_events
from streams.outbox import SyncRecord
from streams.projection import ProjectionConfig
from streams.return_records import ObjectRecord, all_return_records
from tests.agents.klaviyo.test_delivery_engine import CapacityBudgets
from tests.agents.klaviyo.test_delivery_plan import sync_records

TITLE = "returnsync returns"


@pytest.fixture
async def sandbox() -> AsyncIterator[SandboxServer]:
    server = SandboxServer(rate_limit_scale=0)
    await server.start()
    yield server
    await server.stop()


class Engine:
    """A Delivery with custom objects on, its dead letters, against the sandbox."""

    def __init__(self, sandbox: SandboxServer, capacity: int, versions: MemoryVersions | None = None) -> None:
        self.dead: list[dict[str, Any]] = []
        account = KlaviyoAccount("default", "sandbox-key", sandbox.url)

        def make(account: KlaviyoAccount) -> Channel:
            channel = Channel(account, revision="2026-07-15", job_poll_seconds=0.05,
                              retry=RetryPolicy(base_delay=0.0, max_delay=0.0))
            channel.client.budgets = CapacityBudgets(capacity)  # type: ignore[assignment]
            return channel

        async def dead_letter(key: str, record: bytes) -> None:
            self.dead.append(orjson.loads(record))

        self.channels = Channels(lambda tenant: account, make)
        self.delivery = Delivery(self.channels, ProjectionConfig(), dead_letter, versions or MemoryVersions(),
                                 custom_objects_title=TITLE)

    async def __aenter__(self) -> Engine:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.channels.aclose()


def sources(sandbox: SandboxServer) -> list[Any]:
    return list(sandbox.store.account("default").data_sources.values())


def latest(sandbox: SandboxServer) -> dict[str, Any]:
    [source] = sources(sandbox)
    return source.latest("id")


def as_json(record: ObjectRecord) -> dict[str, Any]:
    return orjson.loads(orjson.dumps(dict(record.record), default=float))  # type: ignore[no-any-return]


def final_records(log: list[SyncRecord]) -> dict[str, dict[str, Any]]:
    """Every return's record from the newest state of its customer, without the version (the
    record of a return not touched again carries the version it was written at)."""
    newest = {record.customer_key: record.state for record in log}
    return {record.key: {k: v for k, v in as_json(record).items() if k != "version"}
            for state in newest.values() for record in all_return_records(state)}


def without_version(records: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {key: {k: v for k, v in record.items() if k != "version"} for key, record in records.items()}


@pytest.mark.parametrize("capacity", [0, 100_000], ids=["bulk", "singles"])
async def test_every_return_gets_its_latest_record(sandbox: SandboxServer, capacity: int) -> None:
    log = sync_records(demo_events(25, seed=3), item_lines=True)
    async with Engine(sandbox, capacity) as engine:
        for start in range(0, len(log), 40):
            await engine.delivery.deliver(log[start:start + 40])
    assert without_version(latest(sandbox)) == final_records(log)
    vias = {stored.via for stored in sources(sandbox)[0].records}
    assert vias == ({"bulk"} if capacity == 0 else {"single"})
    assert engine.dead == []


async def test_the_data_source_is_found_again_by_a_new_engine_never_created_twice(
    sandbox: SandboxServer,
) -> None:
    log = sync_records(demo_events(6, seed=4), item_lines=True)
    async with Engine(sandbox, 100) as first:
        await first.delivery.deliver(log[: len(log) // 2])
    async with Engine(sandbox, 100) as second:
        await second.delivery.deliver(log[len(log) // 2:])
    assert [source.title for source in sources(sandbox)] == [TITLE]
    created = [r for r in sandbox.store.requests
               if r.method == "POST" and r.path.rstrip("/") == "/api/data-sources"]
    assert len(created) == 1
    assert without_version(latest(sandbox)) == final_records(log)


async def test_an_older_state_never_overwrites_a_newer_record(sandbox: SandboxServer) -> None:
    log = sync_records(demo_events(10, seed=5), item_lines=True)
    async with Engine(sandbox, 100) as engine:
        await engine.delivery.deliver(log)
        ingested = len(sources(sandbox)[0].records)
        # Redelivered alone after the newer one (a crash re-batched it): its state is older.
        stale = next(record for record in log if record.event.return_id
                     and record.state.version < max(r.state.version for r in log
                                                    if r.customer_key == record.customer_key))
        await engine.delivery.deliver([stale])
    assert len(sources(sandbox)[0].records) == ingested
    assert without_version(latest(sandbox)) == final_records(log)


async def test_only_the_returns_a_batch_touched_are_written(sandbox: SandboxServer) -> None:
    log = sync_records(demo_events(10, seed=6), item_lines=True)
    async with Engine(sandbox, 100) as engine:
        await engine.delivery.deliver(log[:-1])
        before = len(sources(sandbox)[0].records)
        await engine.delivery.deliver(log[-1:])
    written = [stored.record for stored in sources(sandbox)[0].records[before:]]
    last = log[-1]
    touched = {record["return_id"] for record in written}
    assert touched <= {last.event.return_id}
    if last.event.return_id in last.state.returns and last.state.returns[last.event.return_id].counted:
        assert [record["version"] for record in written] == [last.state.version]


async def test_a_refused_record_is_dead_lettered_once_with_klaviyos_detail(sandbox: SandboxServer) -> None:
    log = sync_records(demo_events(8, seed=7), item_lines=True)
    email = log[0].state.identity.email
    sandbox.faults.add({"status": 400, "endpoint": "/api/data-source-record-create-jobs", "email": email,
                        "detail": "record field 'value' is not valid"})
    async with Engine(sandbox, 100) as engine:
        await engine.delivery.deliver(log)
        letters = list(engine.dead)
        await engine.delivery.deliver(log)  # redelivered: the same records, no second dead letter
    assert letters and engine.dead == letters
    assert all(letter["reason"] == "klaviyo_rejected" for letter in letters)
    assert all("record field 'value' is not valid" in letter["error"] for letter in letters)
    refused = {letter["original"]["request"]["attributes"]["record"]["id"] for letter in letters}
    assert all(key.endswith(tuple(r.event.return_id or "?" for r in log if r.state.identity.email == email))
               for key in refused)
    others = {key for key in final_records(log) if key not in refused}
    assert others <= set(latest(sandbox))


def test_bulk_chunks_hold_at_most_500_records_and_4_mb() -> None:
    many = [ObjectRecord(f"t/r{n}", "t/a@b.co", 1, {"id": f"t/r{n}", "value": Decimal(n)})
            for n in range(1200)]
    plan = plan_records(record_writes(many), capacity=10)
    assert [len(chunk) for chunk in plan.chunks] == [BULK_RECORDS_MAX, BULK_RECORDS_MAX, 200]
    big = [ObjectRecord(f"t/r{n}", "t/a@b.co", 1, {"id": f"t/r{n}", "notes": "x" * 900_000})
           for n in range(9)]
    chunks = plan_records(record_writes(big), capacity=0).chunks
    assert sum(len(chunk) for chunk in chunks) == 9
    assert all(sum(write.size for write in chunk) < PAYLOAD_MAX for chunk in chunks)
    assert len(chunks) == 3
    huge = [ObjectRecord("t/x", "t/a@b.co", 1, {"notes": "x" * PAYLOAD_MAX})]
    assert [w.record.key for w in plan_records(record_writes(huge), capacity=5).refused] == ["t/x"]


def test_singles_while_the_budget_lets_them_all_out_now() -> None:
    few = [ObjectRecord(f"t/r{n}", "t/a@b.co", 1, {"id": f"t/r{n}"}) for n in range(3)]
    assert len(plan_records(record_writes(few), capacity=3).singles) == 3
    assert plan_records(record_writes(few), capacity=2).singles == []


async def test_nothing_goes_to_custom_object_endpoints_when_off(sandbox: SandboxServer) -> None:
    log = sync_records(demo_events(5, seed=8), item_lines=True)
    account = KlaviyoAccount("default", "sandbox-key", sandbox.url)
    channels = Channels(lambda tenant: account, lambda account: Channel(account, revision="2026-07-15"))

    async def dead_letter(key: str, record: bytes) -> None:
        raise AssertionError(key)

    await Delivery(channels, ProjectionConfig(), dead_letter).deliver(log)
    await channels.aclose()
    paths = {r.path for r in sandbox.store.requests}
    assert paths and not any("data-source" in path for path in paths)
