"""A permanent refusal is about one profile state or one event, never the batch: the delivery engine
against the real sandbox at Klaviyo's real rate limits (batches handed in as the sync agent hands
them, redeliveries included), and once through broker and worker.

- A profile too large for Klaviyo is refused before sending: no request, one dead letter per
  state (customer + version), none again when the same state comes back.
- A profile Klaviyo refuses costs one request per state; a redelivered state is not sent again.
- A bulk event request refused because of one customer's events is split, those events are
  dead-lettered once per customer and batch, and a redelivery sends only the others.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from datetime import timedelta
from decimal import Decimal
from typing import Any

import orjson
import pytest

from agents.klaviyo.accounts import KlaviyoAccount
from agents.klaviyo.channels import Channel, Channels
from agents.klaviyo.delivery import Delivery
from agents.settings import Settings
from streams import projection
from streams.demo import demo_events
from streams.events import Customer, EventType, ReturnEvent
from streams.outbox import SyncRecord, encode_sync_record
from streams.projection import ProjectionConfig
from streams.reducer import Applied
from tests.agents.klaviyo.test_delivery_plan import sync_records
from tests.integration.conftest import WorkerFactory
from tests.integration.harness import (
    SANDBOX_KEY,
    SandboxThread,
    expected_klaviyo,
    profile_differences,
    wait_until,
)
from tests.integration.test_delivery import converged

BIG = Customer(email="big.names@returnsync-demo.com", first_name="F" * 60_000, last_name="L" * 60_000)


@pytest.fixture
def sandbox() -> Iterator[SandboxThread]:
    running = SandboxThread(rate_limit_scale=1).start()  # Klaviyo's real limits
    yield running
    running.stop()


def credits(customer: Customer, count: int, after: ReturnEvent, tag: str) -> list[ReturnEvent]:
    """`count` store credits for `customer`: each one a new state version."""
    return [ReturnEvent(event_id=f"{tag}:{i}", type=EventType.STORE_CREDIT_ISSUED, customer=customer,
                        occurred_at=after.occurred_at + timedelta(minutes=i + 1), amount=Decimal("5.00"),
                        currency="USD") for i in range(count)]


def batches_with(customer: Customer, ordinary: list[ReturnEvent], tag: str, count: int = 3,
                 ) -> tuple[list[ReturnEvent], list[list[SyncRecord]]]:
    """Ordinary traffic with `customer`'s changes in it: `count` batches, two of its states each."""
    own = credits(customer, 2 * count, ordinary[-1], tag)
    events = sorted([*ordinary, *own], key=lambda e: (e.occurred_at, e.event_id))
    records = sync_records(events)
    # Its records spread over the batches: two per batch, between ordinary ones.
    theirs = [r for r in records if r.event.customer == customer]
    others = [r for r in records if r.event.customer != customer]
    step = -(-len(others) // count)
    batches = [others[i * step:(i + 1) * step] + theirs[2 * i:2 * i + 2] for i in range(count)]
    assert sum(map(len, batches)) == len(records)
    return events, batches


class Run:
    """The engine against the sandbox, with its dead letters kept."""

    def __init__(self, sandbox: SandboxThread) -> None:
        account = KlaviyoAccount("default", SANDBOX_KEY, sandbox.url)
        self.channels = Channels(lambda tenant: account,
                                 lambda account: Channel(account, revision=Settings().klaviyo_revision))
        self.letters: list[tuple[str, dict[str, Any]]] = []

        async def dead_letter(key: str, record: bytes) -> None:
            self.letters.append((key, orjson.loads(record)))

        self.delivery = Delivery(self.channels, ProjectionConfig(), dead_letter)

    async def deliver(self, batches: Sequence[Sequence[SyncRecord]]) -> None:
        for batch in batches:
            await self.delivery.deliver(batch)

    def letters_for(self, customer: Customer) -> list[dict[str, Any]]:
        return [letter for key, letter in self.letters if key.endswith("/" + customer.email)]


def statuses(sandbox: SandboxThread) -> Counter[int]:
    return Counter(r["status"] for r in sandbox.admin("GET", "requests"))


def victim_key(events: Sequence[ReturnEvent], customer: Customer) -> str:
    return next(e.customer_key for e in events if e.customer == customer)


def newest_versions(batches: Sequence[Sequence[SyncRecord]], customer: Customer) -> list[int]:
    return [max(r.state.version for r in batch if r.event.customer == customer) for batch in batches]


def test_a_profile_too_large_for_klaviyo_is_never_sent_and_dead_lettered_once_per_state(
    sandbox: SandboxThread, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The projection cuts every text to 255 characters, so no profile it makes is too large; the
    # engine's own guard is what this checks, so the cut is lifted here.
    monkeypatch.setattr(projection, "MAX_TEXT", 10**9)
    ordinary = demo_events(60, seed=41)
    events, batches = batches_with(BIG, ordinary, "big")
    run = Run(sandbox)

    async def scenario() -> None:
        await run.deliver(batches)
        await run.deliver(batches[1:2])  # a redelivery of the same states
        await run.channels.aclose()

    asyncio.run(scenario())
    expected = expected_klaviyo(events)
    big_email = BIG.email
    del expected.profiles[big_email]
    assert not profile_differences(expected, sandbox), profile_differences(expected, sandbox)[:3]
    wait_until(lambda: sandbox.event_keys() >= expected.events, within=30, what="every timeline event")
    # Its events made it a profile (an event does); the refused write never reached it.
    big = sandbox.profiles()[big_email]
    assert big["first_name"] is None and not big["properties"], "the too-large profile reached Klaviyo"
    assert not [s for s in statuses(sandbox) if s >= 400], statuses(sandbox)  # nothing was sent to fail
    letters = run.letters_for(BIG)
    assert [letter["original"]["version"] for letter in letters] == newest_versions(batches, BIG)
    for letter in letters:
        assert letter["reason"] == "klaviyo_rejected"
        assert letter["error"].startswith("klaviyo 413: profile of")
        assert "refused before sending" in letter["error"]
    assert len(run.letters) == len(letters), "only the too-large customer was refused"


def refused_by_klaviyo(sandbox: SandboxThread, customer: Customer) -> None:
    """Klaviyo refuses every write naming this customer, profile or event, single or bulk, whole
    (400, pointing at no item), as it would a profile whose identifiers conflict."""
    sandbox.admin("POST", "faults", json={"status": 400, "email": customer.email, "method": "POST",
                                          "detail": "Invalid input for this profile."})


def refusals(sandbox: SandboxThread) -> int:
    return statuses(sandbox)[400]


def test_a_customer_klaviyo_refuses_costs_a_bounded_few_requests_and_nothing_when_redelivered(
    sandbox: SandboxThread,
) -> None:
    victim = Customer(email="refused.profile@returnsync-demo.com")
    events, batches = batches_with(victim, demo_events(60, seed=42), "victim")
    refused_by_klaviyo(sandbox, victim)
    run = Run(sandbox)
    counted: dict[str, int] = {}

    async def scenario() -> None:
        await run.deliver(batches)
        counted["first"] = refusals(sandbox)
        await run.deliver(batches)  # every state and event again, as after a crash
        counted["again"] = refusals(sandbox) - counted["first"]
        await run.channels.aclose()

    asyncio.run(scenario())
    expected = expected_klaviyo(events)
    victim_profile = expected.profiles.pop(victim.email)
    assert not profile_differences(expected, sandbox), profile_differences(expected, sandbox)[:3]
    assert sandbox.event_keys() >= {key for key in expected.events if key[0] != victim.email}
    assert counted["again"] == 0, "a state or event Klaviyo refused was sent again"
    assert victim.email not in sandbox.profiles(), "nothing of it reached Klaviyo"
    # Per batch: its profile once, its events split out of a bulk request by halving.
    records = max(map(len, batches))
    assert 0 < counted["first"] <= len(batches) * (1 + 2 * records.bit_length()), counted
    letters = run.letters_for(victim)
    profile_letters = [letter for letter in letters if "version" in letter["original"]]
    assert [letter["original"]["version"] for letter in profile_letters] == newest_versions(batches, victim)
    assert len(letters) - len(profile_letters) <= len(batches), "events: one dead letter per batch at most"
    assert all("Invalid input for this profile." in letter["error"] for letter in letters)
    assert len(run.letters) == len(letters), "nobody else was refused"

    # The cause fixed, a re-drive publishes the customer's events again: as duplicates they hand
    # on the newest state and their own timeline events, which are tried again and land.
    sandbox.admin("DELETE", "faults")
    last = [e for e in events if e.customer == victim][-1]
    state = expected.states[victim_key(events, victim)]
    redriven = SyncRecord(state, last, Applied.DUPLICATE, last.occurred_at)
    rerun = Run(sandbox)
    rerun.delivery.known = run.delivery.known  # the same worker, remembering its refusals

    async def redrive() -> None:
        await rerun.deliver([[redriven]])
        await rerun.channels.aclose()

    asyncio.run(redrive())
    assert sandbox.profiles()[victim.email]["properties"] == victim_profile
    assert (victim.email, "Store Credit Issued", last.event_id, False) in sandbox.event_keys()


def test_a_bulk_batch_refused_for_one_customer_is_split_out_and_never_resent(
    sandbox: SandboxThread,
) -> None:
    victim = Customer(email="refused.events@returnsync-demo.com")
    ordinary = demo_events(150, seed=43)
    own = [replace(e, customer=victim, event_id=f"victim:{e.event_id}") for e in demo_events(3, seed=44)]
    events = sorted([*ordinary, *own], key=lambda e: (e.occurred_at, e.event_id))
    records = sync_records(events)
    refused_by_klaviyo(sandbox, victim)
    run = Run(sandbox)
    counted: dict[str, int] = {}

    async def scenario() -> None:
        await run.deliver([records])  # ~150 profiles and ~1,500 events: both go bulk
        counted["first"] = refusals(sandbox)
        await run.deliver([records])
        counted["again"] = refusals(sandbox) - counted["first"]
        await run.channels.aclose()

    asyncio.run(scenario())
    expected = expected_klaviyo(events)
    del expected.profiles[victim.email]
    wait_until(lambda: not profile_differences(expected, sandbox), within=30, what="everyone else's profile")
    assert sandbox.event_keys() >= {key for key in expected.events if key[0] != victim.email}
    assert not {key for key in sandbox.event_keys() if key[0] == victim.email}
    used = Counter(r["path"] for r in sandbox.admin("GET", "requests"))
    assert used["/api/profile-bulk-import-jobs"] and used["/api/event-bulk-create-jobs"], used
    # Halving isolates it: a refused request per level and a few singles, not one per item.
    assert 0 < counted["first"] <= 2 * len(records).bit_length() + 8, counted
    assert counted["again"] == 0
    letters = run.letters_for(victim)
    assert len(letters) == 2, "one for its profile state, one for its events of the batch"
    [events_letter] = [letter for letter in letters if "version" not in letter["original"]]
    refused_ids = {body["data"]["attributes"]["unique_id"] for body in events_letter["original"]["request"]}
    assert refused_ids == {key[2] for key in expected.events if key[0] == victim.email}


def test_a_worker_delivers_a_customer_with_huge_names_cut_to_what_klaviyo_takes(
    start_worker: WorkerFactory, publish: Callable[..., None], sandbox: SandboxThread,
    bootstrap_servers: str, prefix: str,
) -> None:
    """Through broker and worker: 60,000-character names once made a profile Klaviyo refuses for
    good; the projection now cuts them, so the customer is delivered like anyone else."""
    ordinary = demo_events(80, seed=45)
    big = sync_records(credits(BIG, 12, ordinary[-1], "big"))
    start_worker()
    publish(ordinary)
    for record in big:  # one at a time: several batches, several states
        publish(raw=[(record.customer_key.encode(), encode_sync_record(record))],
                topic="returnsync-klaviyo-sync")
    converged(expected_klaviyo(ordinary), sandbox, within=120)
    wait_until(lambda: sandbox.profiles().get(BIG.email, {}).get("first_name") == "F" * projection.MAX_TEXT,
               within=60, what="the big customer's profile, names cut to 255 characters")
    assert sandbox.profiles()[BIG.email]["properties"]["returns_store_credit_balance"] == 60.0
    assert not [s for s in statuses(sandbox) if s >= 400], "nothing was refused"
