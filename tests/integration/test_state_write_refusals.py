"""A customer whose state grows past RETURNSYNC_MAX_STATE_BYTES (here set low: returns left open
are kept in full) through a real worker, broker and sandbox: the events that would pass it are
dead-lettered `record_too_large` and counted, the customer keeps the state of the events before
them, and the worker stays healthy and keeps delivering everybody else."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import orjson

from streams.demo import demo_events
from streams.events import ReturnEvent
from tests.integration.conftest import WorkerFactory
from tests.integration.harness import SandboxThread, expected_klaviyo, profile_differences, wait_until
from tests.integration.test_delivery import metric_value
from tests.integration.webhook_support import read_all
from tests.streams.strategies import event

LIMIT = 6000
HOARDER = "hoarder@returnsync-demo.com"


def open_returns(count: int) -> list[ReturnEvent]:
    """Returns requested and never closed: each one stays in the state in full."""
    return [event("return.requested", return_id=f"R-{number:04d}", customer=HOARDER,
                  occurred_at=f"2026-01-01T{number // 60:02d}:{number % 60:02d}:00Z",
                  event_id=f"hoard-{number:04d}", items=[{"sku": f"SKU-{number:04d}", "quantity": 1}])
            for number in range(count)]


def letters(bootstrap_servers: str, prefix: str) -> list[dict[str, Any]]:
    records = read_all(bootstrap_servers, prefix + "returns.deadletter")
    return [orjson.loads(record.value) for record in records]


def applied_requests(worker: Any) -> float:
    labels = 'result="applied",type="return.requested"'
    return metric_value(worker, "returnsync_events_processed_total", labels) or 0


def too_large(worker: Any) -> float:
    return metric_value(worker, "returnsync_state_write_failures_total", 'reason="record_too_large"') or 0


def test_an_event_whose_state_would_be_too_large_is_dead_lettered_and_nothing_else_stops(
    start_worker: WorkerFactory, publish: Callable[..., None], sandbox: SandboxThread,
    bootstrap_servers: str, prefix: str,
) -> None:
    hoarded = open_returns(40)
    # Two sets of customers: those with events before the refusals, and those with events after.
    ordinary = demo_events(40, seed=61)
    first = {e.customer_key for e in ordinary[: len(ordinary) // 2]}
    before = [e for e in ordinary if e.customer_key in first]
    after = [e for e in ordinary if e.customer_key not in first]
    worker = start_worker(env={"RETURNSYNC_MAX_STATE_BYTES": str(LIMIT)})
    publish([*before, *hoarded])

    # Every return.requested is either applied or refused; each refusal is counted before its
    # dead letter is sent, so the topic is read once it holds as many.
    requested = len(hoarded) + sum(1 for e in before if e.type.value == "return.requested")
    wait_until(lambda: applied_requests(worker) + too_large(worker) >= requested, within=60,
               what="every return.requested applied or refused")

    def all_letters() -> list[dict[str, Any]] | None:
        found = letters(bootstrap_servers, prefix)
        return found if len(found) == too_large(worker) else None

    refused = wait_until(all_letters, within=30, what="a dead letter for each refusal")
    assert refused
    assert {(letter["stage"], letter["reason"]) for letter in refused} == {("state", "record_too_large")}
    assert all(f"over the {LIMIT:,} byte limit" in letter["error"] for letter in refused)
    refused_ids = {orjson.loads(letter["original"])["event_id"] for letter in refused}
    assert refused_ids <= {e.event_id for e in hoarded} and len(refused_ids) < len(hoarded)
    labels = 'reason="record_too_large",stage="state"'
    assert metric_value(worker, "returnsync_deadletters_total", labels) == len(refused)

    # The worker is healthy and carries on: events published after the refusals are delivered.
    for path in ("/health", "/ready"):
        assert httpx.get(worker.web_url + path, timeout=10).status_code == 200  # type: ignore[attr-defined]
    publish(after)
    # The hoarder is what the events before the refused ones made; everybody else is exact.
    kept = [e for e in hoarded if e.event_id not in refused_ids]
    expected = expected_klaviyo([*before, *kept, *after])
    try:
        wait_until(lambda: not profile_differences(expected, sandbox), within=90,
                   what="every profile as its applied events make it")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {profile_differences(expected, sandbox)[:3]}") from None
    assert expected.profiles[HOARDER]["returns_active_count"] == len(kept)
