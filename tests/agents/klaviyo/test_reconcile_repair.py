"""A reconcile repair writes beside live delivery and must never leave an older state over a newer one.

The rules (`verdict`) are checked case by case; the loop (`repair`) against a fake Klaviyo and a
fake live delivery that records its floor and writes a newer state while the repair's own write is
on the wire, so the repair's older write lands last, as it can in production.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

import httpx
import orjson
import pytest

from agents.klaviyo.accounts import KlaviyoAccount
from agents.klaviyo.channels import Channel, Channels
from agents.klaviyo.client import RetryPolicy
from agents.klaviyo.reconcile import Drift, Repair, Verdict, _apply_floor, repair, verdict
from agents.klaviyo.versions import Floor, MemoryVersions
from streams.demo import demo_events
from streams.events import customer_ref
from streams.projection import ProjectionConfig
from streams.reducer import apply_event
from streams.state import CustomerState

CONFIG = ProjectionConfig()


def state_at(version: int) -> CustomerState:
    """One customer's state, `version` events in; returns_count carries the version to Klaviyo."""
    event = demo_events(1, seed=3)[0]
    return replace(apply_event(None, event).state, version=version, return_count=version)


KEY = state_at(1).customer_key
EMAIL = state_at(1).identity.email


@pytest.mark.parametrize(
    ("version", "floor", "job_done", "unseen_ok", "seen", "expected"),
    [
        (5, Floor(5), True, False, None, Verdict.WRITE),  # live wrote exactly this: real drift
        (5, Floor(6), True, False, None, Verdict.BEHIND),  # live wrote newer: leave it
        (5, Floor(4), True, False, None, Verdict.IN_FLIGHT),  # live has not got to 5 yet
        (5, Floor(5, "job-1"), False, False, None, Verdict.IN_FLIGHT),  # its bulk job still runs
        (5, Floor(5, "job-1"), True, False, None, Verdict.WRITE),
        (5, None, True, False, None, Verdict.IN_FLIGHT),  # worker: never written by live yet
        (5, None, True, True, None, Verdict.WRITE),  # CLI: no live writer at all
        (None, Floor(5), True, False, None, Verdict.GONE),
        # After the repair wrote 5 and then saw floor 6: a live write of 6 may sit under it.
        (6, Floor(6), True, False, 6, Verdict.WRITE),
        (6, Floor(7), True, False, 6, Verdict.SUPERSEDED),  # 7 went out after the repair's write
        (7, Floor(6), True, False, 6, Verdict.SUPERSEDED),  # 7 not recorded yet: it follows
        (5, Floor(6), True, False, 6, Verdict.WAIT),  # newest known here is older than 6
        (6, Floor(6, "job-2"), False, False, 6, Verdict.WAIT),  # 6 may have landed already
        (None, Floor(6), True, False, 6, Verdict.WAIT),
    ],
)
def test_verdict(version: int | None, floor: Floor | None, job_done: bool, unseen_ok: bool,
                 seen: int | None, expected: Verdict) -> None:
    assert verdict(version, floor, job_done, unseen_ok=unseen_ok, seen=seen) is expected


class World:
    """The worker's table, live delivery's floors and Klaviyo's profile for one customer."""

    def __init__(self, version: int) -> None:
        self.table = state_at(version)
        self.floors = MemoryVersions()
        self.floors.mark(KEY, Floor(version))
        self.klaviyo: list[int] = [version]  # returns_count of every write applied, in order
        self.during_repair_write: Callable[[], None] = lambda: None

    def live_delivers(self, version: int) -> None:
        """An event is applied and live delivery writes it: floor recorded first, then the write."""
        self.table = state_at(version)
        self.floors.mark(KEY, Floor(version))
        self.klaviyo.append(version)

    def handle(self, request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/api/profile-import"
        written = orjson.loads(request.content)["data"]["attributes"]["properties"]["returns_count"]
        hook, self.during_repair_write = self.during_repair_write, lambda: None
        hook()  # live delivery overtakes the repair's request on the wire
        self.klaviyo.append(written)
        return httpx.Response(200, json={"data": {"type": "profile", "id": "p"}})

    async def current(self, keys: Sequence[str]) -> Mapping[str, CustomerState]:
        return {KEY: self.table} if KEY in keys else {}

    async def read_floors(self, keys: Sequence[str]) -> MemoryVersions:
        copy = MemoryVersions()
        floor = self.floors.floor(KEY)
        if KEY in keys and floor is not None:
            copy.mark(KEY, floor)
        return copy

    async def repair(self, *, unseen_ok: bool = False) -> Repair:
        account = KlaviyoAccount("default", "key", "http://klaviyo.test")
        channels = Channels(lambda tenant: account, lambda acct: Channel(
            acct, revision="2026-07-15", retry=RetryPolicy(base_delay=0.0, max_delay=0.0),
            transport=httpx.MockTransport(self.handle)))
        try:
            return await repair(channels, [KEY], self.current, self.read_floors, CONFIG, unseen_ok=unseen_ok)
        finally:
            await channels.aclose()


def test_repair_writes_the_current_state_where_live_delivery_wrote_it() -> None:
    world = World(version=3)
    result = asyncio.run(world.repair())
    assert result.repaired == [KEY] and result.resolved
    assert world.klaviyo == [3, 3]


def test_a_newer_live_write_under_the_repairs_write_is_followed_by_the_newest_state() -> None:
    world = World(version=3)
    world.during_repair_write = lambda: world.live_delivers(4)
    result = asyncio.run(world.repair())
    # The repair's 3 landed after live delivery's 4; the repair saw floor 4 and wrote 4 again.
    assert world.klaviyo == [3, 4, 3, 4]
    assert world.klaviyo[-1] == 4 and result.repaired == [KEY] and result.resolved


def test_a_customer_that_keeps_changing_is_reported_unsettled() -> None:
    world = World(version=3)

    def live_again() -> None:
        world.live_delivers(world.table.version + 1)
        world.during_repair_write = live_again

    world.during_repair_write = live_again
    result = asyncio.run(world.repair())
    assert result.unsettled == [KEY] and not result.repaired and not result.resolved


def test_a_state_older_than_live_delivery_wrote_is_never_written() -> None:
    world = World(version=3)
    world.floors.mark(KEY, Floor(5))  # live delivery is ahead of this table (a zombie's view)
    result = asyncio.run(world.repair())
    assert world.klaviyo == [3] and result.left == {Verdict.BEHIND: 1} and not result.resolved


def test_a_state_live_delivery_has_not_written_yet_is_left_to_it() -> None:
    world = World(version=3)
    world.table = state_at(4)  # applied; its sync record is still on the way
    result = asyncio.run(world.repair())
    assert world.klaviyo == [3] and result.left == {Verdict.IN_FLIGHT: 1}


def test_without_any_floor_only_the_cli_writes() -> None:
    world = World(version=3)
    world.floors = MemoryVersions()
    assert asyncio.run(world.repair(unseen_ok=False)).left == {Verdict.IN_FLIGHT: 1}
    assert world.klaviyo == [3]
    assert asyncio.run(world.repair(unseen_ok=True)).repaired == [KEY]
    assert world.klaviyo == [3, 3]


def test_a_refused_write_is_reported_failed() -> None:
    world = World(version=3)

    def refuse(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json={"errors": [{"detail": "bad email"}]})

    world.handle = refuse  # type: ignore[method-assign]
    result = asyncio.run(world.repair())
    assert result.failed == [KEY] and not result.repaired and not result.resolved


def test_floor_records_are_read_in_the_versions_topic_format() -> None:
    floors = MemoryVersions()
    wanted = {KEY}
    _apply_floor(floors, wanted, KEY.encode(), b'{"v": 4, "job": null}')
    _apply_floor(floors, wanted, KEY.encode(), b'{"v": 6, "job": "j1"}')
    _apply_floor(floors, wanted, KEY.encode(), b'{"v": 5, "job": null}')  # floors only rise
    _apply_floor(floors, wanted, b"default/other@example.com", b'{"v": 9, "job": null}')
    _apply_floor(floors, wanted, b"job:j1", b'{"done": true}')
    _apply_floor(floors, wanted, KEY.encode(), None)  # a tombstone
    assert floors.floor(KEY) == Floor(6, "j1") and floors.job_complete("j1")
    assert floors.floor("default/other@example.com") is None


def test_drift_reports_name_customers_by_hash_unless_asked() -> None:
    drift = Drift()
    drift.add(state_at(3), {"returns_count": (3, 10)})
    drift.add(state_at(4), {})
    for shown in (drift.report(), orjson.dumps(drift.summary()).decode()):
        assert EMAIL not in shown and customer_ref(KEY) in shown
    assert EMAIL in drift.report(show_customers=True)
    assert drift.summary(show_customers=True)["examples"][0]["customer"] == EMAIL
    assert drift.summary() == {
        "compared": 2, "drifted": 1, "per_property": {"returns_count": 1},
        "examples": [{"customer": customer_ref(KEY), "property": "returns_count",
                      "derived": 3, "klaviyo": 10}],
    }


def test_a_repair_summary_counts_and_says_whether_it_resolved() -> None:
    done = Repair(repaired=[KEY], left=Counter({Verdict.BEHIND: 2}), failed=[], unsettled=[KEY])
    assert done.summary() == {"repaired": 1, "left_to_live_delivery": {"behind": 2}, "refused": 0,
                              "unsettled": 1, "resolved": False}
