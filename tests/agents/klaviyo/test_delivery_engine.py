"""The real delivery engine against a fake Klaviyo that fails, loses answers and applies bulk
jobs late: newest state still wins for every customer, and no event is lost.

The fake Klaviyo (an httpx MockTransport) answers 503s, drops connections after applying a
write, and applies bulk profile imports asynchronously: at some later request, in the order the
jobs were created (an assumption about Klaviyo's queue, see README). Batches are of any size,
the budget decides singles vs bulk, settling batches overlap as in the worker's pipeline, and a
"crash" cancels the batch in flight and starts a new engine that keeps only the persisted floors.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from typing import Any

import httpx
import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.klaviyo.accounts import KlaviyoAccount
from agents.klaviyo.channels import Channel, Channels
from agents.klaviyo.client import RetryPolicy
from agents.klaviyo.delivery import Delivery
from agents.klaviyo.ratelimit import EndpointBudget
from agents.klaviyo.versions import Floor, MemoryVersions
from streams.outbox import SyncRecord
from streams.projection import ProjectionConfig, klaviyo_events
from tests.agents.klaviyo.test_delivery_versions import partition_logs


class FakeKlaviyo:
    def __init__(self, rng: random.Random, failure_rate: float) -> None:
        self.rng = rng
        self.failure_rate = failure_rate
        self.applied: dict[str, list[int]] = {}
        self.events: set[tuple[str, str, str]] = set()
        self.jobs: dict[str, list[tuple[str, int]]] = {}  # pending, in creation order
        self.requests = 0
        self.crash_at: int | None = None
        self.crashed = asyncio.Event()

    def apply(self, email: str, version: int) -> None:
        self.applied.setdefault(email, []).append(version)

    def apply_jobs_through(self, job_id: str | None) -> None:
        """Klaviyo's queue: a job is applied only after every job created before it."""
        while self.jobs:
            first = next(iter(self.jobs))
            for email, version in self.jobs.pop(first):
                self.apply(email, version)
            if first == job_id:
                return

    async def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        if self.crash_at is not None and self.requests >= self.crash_at:
            self.crashed.set()
        if self.jobs and self.rng.random() < 0.2:
            self.apply_jobs_through(next(iter(self.jobs)))
        roll = self.rng.random()
        if roll < self.failure_rate:
            return httpx.Response(503, json={"errors": [{"detail": "down"}]})
        response = self.route(request)
        if roll < self.failure_rate * 2 and request.method == "POST":
            raise httpx.ReadTimeout("answer lost after the write landed", request=request)
        return response

    def route(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        body: Any = orjson.loads(request.content) if request.content else None
        if path == "/api/profile-import":
            attributes = body["data"]["attributes"]
            self.apply(attributes["email"], attributes["properties"]["returns_count"])
            return httpx.Response(200, json={"data": {"type": "profile", "id": "p"}})
        if path == "/api/profile-bulk-import-jobs":
            job_id = f"job-{self.requests}"
            items = body["data"]["attributes"]["profiles"]["data"]
            self.jobs[job_id] = [(i["attributes"]["email"], i["attributes"]["properties"]["returns_count"])
                                 for i in items]
            return httpx.Response(202, json={"data": {"type": "profile-bulk-import-job", "id": job_id}})
        if path.endswith("/import-errors"):
            return httpx.Response(200, json={"data": [], "links": {"next": None}})
        if path.startswith("/api/profile-bulk-import-jobs/"):
            job_id = path.rsplit("/", 1)[-1]
            if job_id in self.jobs and self.rng.random() < 0.5:
                self.apply_jobs_through(job_id)
            status = "processing" if job_id in self.jobs else "complete"
            return httpx.Response(200, json={"data": {"attributes": {"status": status, "failed_count": 0}}})
        if path == "/api/events":
            attributes = body["data"]["attributes"]
            email = attributes["profile"]["data"]["attributes"]["email"]
            metric = attributes["metric"]["data"]["attributes"]["name"]
            self.events.add((email, metric, attributes["unique_id"]))
            return httpx.Response(202)
        if path == "/api/event-bulk-create-jobs":
            for entry in body["data"]["attributes"]["events-bulk-create"]["data"]:
                email = entry["attributes"]["profile"]["data"]["attributes"]["email"]
                for event in entry["attributes"]["events"]["data"]:
                    name = event["attributes"]["metric"]["data"]["attributes"]["name"]
                    self.events.add((email, name, event["attributes"]["unique_id"]))
            return httpx.Response(202)
        return httpx.Response(404, json={"errors": [{"detail": f"no route {path}"}]})


class PersistedVersions(MemoryVersions):
    """Floors that take a few loop turns to persist, as a produce to Kafka does."""

    async def record(self, marks: Sequence[tuple[str, Floor]]) -> None:
        for _ in range(3):
            await asyncio.sleep(0)
        await super().record(marks)


class CapacityBudgets:
    """No waiting; `available` is what the test says, to steer singles vs bulk."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity

    def get(self, endpoint: str) -> EndpointBudget | None:
        return None

    def available(self, endpoint: str) -> int:
        return self.capacity


def engine(fake: FakeKlaviyo, versions: MemoryVersions, capacity: int) -> tuple[Delivery, Channels]:
    account = KlaviyoAccount("default", "key", "http://klaviyo.test")

    def make(account: KlaviyoAccount) -> Channel:
        channel = Channel(account, revision="2026-07-15", retry=RetryPolicy(base_delay=0.0, max_delay=0.0),
                          transport=httpx.MockTransport(fake.handle), job_poll_seconds=0.0)
        channel.client.budgets = CapacityBudgets(capacity)  # type: ignore[assignment]
        return channel

    async def dead_letter(key: str, record: bytes) -> None:
        raise AssertionError(f"nothing here is permanent, yet {key} was dead-lettered")

    channels = Channels(lambda tenant: account, make)
    return Delivery(channels, ProjectionConfig(), dead_letter, versions), channels


async def consume(log: Sequence[SyncRecord], data: st.DataObject, fake: FakeKlaviyo) -> None:
    versions = PersistedVersions()
    committed, crashes = 0, 0
    while committed < len(log):
        capacity = data.draw(st.sampled_from([0, 2, 1000]), label="capacity")
        delivery, channels = engine(fake, versions, capacity)
        position, settling = committed, []
        crash = crashes < 2 and data.draw(st.booleans(), label="crash")
        fake.crash_at = fake.requests + data.draw(st.integers(1, 12), label="crash after") if crash else None
        fake.crashed.clear()
        try:
            while position < len(log):
                size = data.draw(st.integers(1, 8), label="batch size")
                submit = asyncio.ensure_future(delivery.submit(log[position:position + size]))
                crashed = asyncio.ensure_future(fake.crashed.wait())
                await asyncio.wait([submit, crashed], return_when=asyncio.FIRST_COMPLETED)
                crashed.cancel()
                if not submit.done():
                    raise _Crash(submit)
                settling.append(submit.result())
                position += size
                if data.draw(st.booleans(), label="settle and commit"):
                    await asyncio.gather(*settling)
                    settling, committed = [], min(position, len(log))
            await asyncio.gather(*settling)
            committed = len(log)
        except _Crash as crash_in_flight:
            crashes += 1
            crash_in_flight.submit.cancel()
            await asyncio.gather(crash_in_flight.submit, return_exceptions=True)
            await delivery.quiesce()
            for pending in settling:
                pending.cancel()
        finally:
            fake.crash_at = None
            await channels.aclose()


class _Crash(Exception):
    def __init__(self, submit: asyncio.Future[Any]) -> None:
        super().__init__("crash")
        self.submit = submit


@settings(max_examples=150, deadline=None)
@given(
    log=partition_logs(),
    data=st.data(),
    seed=st.integers(0, 2**32),
    failure_rate=st.sampled_from([0, 0.1, 0.3]),
)
def test_engine_writes_every_customers_states_in_order_and_loses_nothing(
    log: list[SyncRecord], data: st.DataObject, seed: int, failure_rate: float
) -> None:
    fake = FakeKlaviyo(random.Random(seed), failure_rate)
    asyncio.run(consume(log, data, fake))
    fake.apply_jobs_through(None)  # Klaviyo eventually applies whatever is queued
    newest: dict[str, int] = {}
    for item in log:
        email = item.state.identity.email
        newest[email] = max(newest.get(email, 0), item.state.version)
    for email, top in newest.items():
        sequence = fake.applied.get(email, [])
        assert sequence == sorted(sequence), f"{email}: Klaviyo applied {sequence}"
        assert sequence and sequence[-1] == top, f"{email}: ended at {sequence}, newest is {top}"
    expected = {(e.email, e.metric, e.unique_id)
                for r in log for e in klaviyo_events(r.event, ProjectionConfig())}
    assert expected <= fake.events
