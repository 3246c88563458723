"""The worker's scheduled reconcile finds a profile changed behind its back and repairs it."""

from __future__ import annotations

from collections.abc import Callable

from streams.demo import demo_events
from tests.integration.conftest import WorkerFactory
from tests.integration.harness import SandboxThread, assert_klaviyo_matches, expected_klaviyo, wait_until


def test_scheduled_reconcile_repairs_planted_drift(
    start_worker: WorkerFactory, publish: Callable[..., None], sandbox: SandboxThread
) -> None:
    events = demo_events(8, seed=21)
    expected = expected_klaviyo(events)
    start_worker(
        env={
            "RETURNSYNC_RECONCILE_INTERVAL": "2",
            "RETURNSYNC_RECONCILE_SAMPLE": "1000",
            "RETURNSYNC_RECONCILE_REPAIR": "1",
        }
    )
    publish(events)
    assert_klaviyo_matches(expected, sandbox, within=90)

    email = next(iter(expected.profiles))
    truth = expected.profiles[email]["returns_count"]
    sandbox.admin("POST", "profiles", json={"email": email, "properties": {"returns_count": truth + 40}})
    assert sandbox.profiles()[email]["properties"]["returns_count"] == truth + 40, "drift planted"

    wait_until(
        lambda: sandbox.profiles()[email]["properties"]["returns_count"] == truth,
        within=60,
        what="the scheduled reconcile to repair the planted drift",
    )
    assert_klaviyo_matches(expected, sandbox, within=30)
