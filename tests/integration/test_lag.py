"""Consumer lag on /metrics, against the real broker, sandbox and a worker process.

The sync topic's lag is measured on a schedule of its own from what delivery committed, so while
Klaviyo fails (503s retried, 401 pausing the account) it keeps growing in messages and seconds
instead of freezing at its last value, and it drains to 0 after recovery. returns.raw, which the
normalize agent consumes, is measured too.
"""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from streams.demo import demo_events
from tests.integration.conftest import PARTITIONS, WorkerFactory
from tests.integration.harness import SandboxThread, expected_klaviyo, wait_until
from tests.integration.test_delivery import WARMUP, converged, more_credit
from tests.streams.adapter_support import fixture_body, fixture_headers, fixture_names

Lag = dict[str, tuple[float, float]]
"""partition -> (messages, seconds)."""


def lag_of(worker: object, topic: str) -> Lag:
    """The worker's lag series for one topic, as /metrics shows them now."""
    text = httpx.get(f"{worker.web_url}/metrics", timeout=10).text  # type: ignore[attr-defined]
    values: dict[str, dict[str, float]] = {"messages": {}, "seconds": {}}
    for family in text_string_to_metric_families(text):
        for unit in values:
            if family.name == f"returnsync_consumer_lag_{unit}":
                for sample in family.samples:
                    if sample.labels.get("topic") == topic:
                        values[unit][sample.labels["partition"]] = sample.value
    return {p: (values["messages"][p], values["seconds"].get(p, -1.0)) for p in values["messages"]}


def processed(worker: object) -> float:
    text = httpx.get(f"{worker.web_url}/metrics", timeout=10).text  # type: ignore[attr-defined]
    return sum(sample.value for family in text_string_to_metric_families(text)
               if family.name == "returnsync_events_processed" for sample in family.samples
               if sample.name == "returnsync_events_processed_total")


def total(lag: Lag) -> float:
    return sum(messages for messages, _ in lag.values())


def oldest(lag: Lag) -> float:
    return max((seconds for _, seconds in lag.values()), default=0.0)


def drained(lag: Lag) -> bool:
    return len(lag) == PARTITIONS and all(value == (0.0, 0.0) for value in lag.values())


@pytest.mark.parametrize(
    "fault", [{"status": 503}, {"status": 401}], ids=["outage-503", "auth-401-pause"])
def test_sync_lag_grows_while_klaviyo_fails_and_drains_after_recovery(
    start_worker: WorkerFactory, publish: Callable[..., None], sandbox: SandboxThread, prefix: str,
    fault: dict[str, int],
) -> None:
    sync_topic = f"{prefix}returnsync-klaviyo-sync"
    events = demo_events(20, seed=31)
    later = more_credit(events, 8, tag="lag")
    expected = expected_klaviyo([WARMUP, *events, *later])
    worker = start_worker(env={"RETURNSYNC_KLAVIYO_AUTH_PAUSE_SECONDS": "1"})
    publish([WARMUP])
    wait_until(lambda: sandbox.event_keys() >= expected_klaviyo([WARMUP]).events, within=90,
               what="the warm-up event to be delivered")
    wait_until(lambda: drained(lag_of(worker, sync_topic)), within=30,
               what=f"lag 0 on every partition of {sync_topic}")

    sandbox.admin("POST", "faults", json=fault)  # holds until cleared
    publish(events)
    wait_until(lambda: any(r["status"] == fault["status"] for r in sandbox.admin("GET", "requests")),
               within=60, what="deliveries to meet the failing Klaviyo")
    def lagging(more_than: Lag | None = None) -> Lag | None:
        lag = lag_of(worker, sync_topic)
        if more_than is None:
            return lag if total(lag) > 0 and oldest(lag) > 0 else None
        # More messages, not len(later) more: the embedded broker's ListOffsets counts a new
        # batch as one record while nothing is fetched (agents/devstack/broker.py: partition_ends).
        grown = total(lag) > total(more_than) and oldest(lag) >= oldest(more_than) + 3
        return lag if grown else None

    first = wait_until(lagging, within=30, what=f"lag on {sync_topic} while Klaviyo fails")
    # Still failing: more records pile up behind the blocked batch and the oldest gets older.
    publish(later)
    wait_until(lambda: lagging(first), within=30,
               what=f"lag on {sync_topic} growing in messages and seconds beyond {first}")
    assert sandbox.event_keys() == expected_klaviyo([WARMUP]).events, "nothing got through meanwhile"
    # Delivery is decoupled: the state agent has applied everything meanwhile.
    wait_until(lambda: drained(lag_of(worker, f"{prefix}returns.events")), within=30,
               what="the state agent caught up on returns.events while Klaviyo fails")
    applied = processed(worker)
    assert applied >= 1 + len(events) + len(later), f"{applied:.0f} events through the reducer"

    sandbox.admin("DELETE", "faults")
    converged(expected, sandbox, within=120)
    wait_until(lambda: drained(lag_of(worker, sync_topic)), within=30,
               what=f"lag on {sync_topic} back to 0 after recovery")


def test_returns_raw_lag_is_exported_after_webhook_traffic(
    start_worker: WorkerFactory, sandbox: SandboxThread, prefix: str,
) -> None:
    raw_topic = f"{prefix}returns.raw"
    worker = start_worker()  # the dev stack: sources without a secret are accepted
    for name in fixture_names("loop"):
        response = httpx.post(f"{worker.web_url}/webhooks/loop",  # type: ignore[attr-defined]
                              content=fixture_body("loop", name), headers=fixture_headers("loop", name),
                              timeout=30)
        assert response.status_code == 200, f"loop/{name}: {response.status_code} {response.text}"
    wait_until(lambda: sandbox.events(), within=60, what="the webhooks to reach Klaviyo")
    wait_until(lambda: drained(lag_of(worker, raw_topic)), within=30,
               what=f"lag series at 0 for every partition of {raw_topic}")
