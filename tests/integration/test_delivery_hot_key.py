"""A hot key stays cheap to deliver: one customer with a long history (hundreds of returns under
one email, as POS orders sharing a placeholder email make) costs no more Klaviyo requests per
event than the ordinary customers delivered beside it. Broker, worker and sandbox are real.

The hot customer's tenant has a Klaviyo account of its own (`KLAVIYO_API_KEY_HOT`), so the
sandbox's request log counts its requests apart while it shares the topics, the worker and its
batches with everybody else. Requests are counted, never timed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from streams.demo import demo_events
from streams.events import Customer, ReturnEvent
from tests.integration.conftest import WorkerFactory
from tests.integration.harness import (
    SANDBOX_KEY,
    SandboxThread,
    as_klaviyo_json,
    expected_klaviyo,
    wait_until,
)

HOT_KEY = "sandbox-key-hot"
HOT_EMAIL = "noemail@store.com"


@pytest.fixture
def sandbox() -> Iterator[SandboxThread]:
    running = SandboxThread(rate_limit_scale=0, api_keys={SANDBOX_KEY: "default", HOT_KEY: "hot"}).start()
    yield running
    running.stop()


def hot_customer_events(count: int) -> list[ReturnEvent]:
    """`count` events of many return lifecycles, all under one email, in time order."""
    customer = Customer(email=HOT_EMAIL)
    events = [dataclasses.replace(e, customer=customer, tenant="hot", event_id=f"hot:{e.event_id}")
              for e in demo_events(count // 5 + 20, seed=5)]
    assert len(events) >= count
    return events[:count]


def counts(sandbox: SandboxThread, account: str) -> dict[str, Any]:
    data: dict[str, Any] = sandbox.admin("GET", "counts", params={"account": account})
    return data


def event_keys(sandbox: SandboxThread, account: str) -> set[tuple[str, str, str, bool]]:
    return {(e["email"], e["metric"], e["unique_id"], e["backfill"])
            for e in sandbox.admin("GET", "events", params={"account": account})}


def settled(sandbox: SandboxThread, seen: dict[str, Any]) -> bool:
    """The request logs stood still since the last look (bulk jobs polled to the end)."""
    totals = {account: counts(sandbox, account)["requests"]["total"] for account in ("default", "hot")}
    still = totals == seen.get("totals")
    seen["totals"] = totals
    return still


def test_a_hot_customer_costs_no_more_requests_per_event_than_ordinary_ones(
    start_worker: WorkerFactory, publish: Callable[..., None], sandbox: SandboxThread,
) -> None:
    hot = hot_customer_events(1000)
    ordinary = demo_events(60, seed=51)
    start_worker(env={"KLAVIYO_API_KEY_HOT": HOT_KEY, "RETURNSYNC_SYNC_BATCH_SECONDS": "0.5"})
    publish(sorted([*hot, *ordinary], key=lambda e: (e.occurred_at, e.event_id)))

    for account, events in (("hot", hot), ("default", ordinary)):
        expected = expected_klaviyo(events)
        wait_until(lambda: event_keys(sandbox, account) >= expected.events, within=240,  # noqa: B023
                   what=f"every timeline event of account {account}")
        assert event_keys(sandbox, account) == expected.events
    hot_state = expected_klaviyo(hot).profiles[HOT_EMAIL]

    def hot_profile() -> bool:
        [profile] = sandbox.admin("GET", "profiles", params={"account": "hot"})
        return {k: profile["properties"].get(k) for k in hot_state} == as_klaviyo_json(hot_state)

    wait_until(hot_profile, within=60, what="the hot customer's profile at its newest state")
    seen: dict[str, Any] = {}
    wait_until(lambda: settled(sandbox, seen), within=60, every=2.0, what="no more requests")

    hot_requests = counts(sandbox, "hot")["requests"]
    ordinary_requests = counts(sandbox, "default")["requests"]
    hot_per_event = hot_requests["total"] / len(hot)
    ordinary_per_event = ordinary_requests["total"] / len(ordinary)
    report = (f"hot: {hot_requests['total']} requests for {len(hot)} events "
              f"{hot_requests['by_endpoint']}; ordinary: {ordinary_requests['total']} for "
              f"{len(ordinary)} {ordinary_requests['by_endpoint']}")
    assert hot_per_event <= ordinary_per_event, report
    assert not {s for s in hot_requests["by_status"] if s.startswith(("4", "5"))}, report
