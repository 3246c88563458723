"""The worker's scheduled reconcile finds a profile changed behind its back and repairs it, and never
writes a customer's older state over the newer one live delivery wrote meanwhile."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from agents.devstack.processes import ChildProcess
from streams.demo import demo_events
from streams.events import EventType, ReturnEvent, ReturnItem
from tests.integration.conftest import WorkerFactory
from tests.integration.harness import (
    Expected,
    SandboxThread,
    assert_klaviyo_matches,
    expected_klaviyo,
    wait_until,
)

# Grace before a drifted customer is checked again: 4 x the sync batch time, here 12 s. Long
# enough for live delivery to write a new event inside it, and for a stale repair to show
# before the next round could heal it.
SLOW_GRACE = {
    "RETURNSYNC_RECONCILE_INTERVAL": "2",
    "RETURNSYNC_RECONCILE_SAMPLE": "1000",
    "RETURNSYNC_RECONCILE_REPAIR": "1",
    "RETURNSYNC_SYNC_BATCH_SECONDS": "3",
}


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


def test_a_customer_changed_during_the_grace_period_is_not_repaired_with_its_sampled_state(
    start_worker: WorkerFactory, publish: Callable[..., None], sandbox: SandboxThread
) -> None:
    worker, email, newer, after = synced_customer_about_to_change(start_worker, publish, sandbox)
    wait_for_a_round_to_end(worker)  # none is in its grace period: the next one samples afresh
    plant_drift(sandbox, email)
    detected = wait_for_request(sandbox, "GET", "/api/profiles", after=datetime.now(UTC),
                                what="a reconcile round reading the drifted profile")
    publish([newer])  # inside that round's grace period: the customer changes
    wait_until(lambda: properties(sandbox, email) == after.profiles[email], within=30,
               what="live delivery to write the customer's new state", every=0.1)

    # The next read of profiles comes once the round that saw the drift has finished.
    wait_for_request(sandbox, "GET", "/api/profiles", after=received(detected),
                     what="the reconcile round after the one that saw the drift")
    assert properties(sandbox, email) == after.profiles[email], (
        f"a repair wrote the sampled (older) state over the newer one\n{reconcile_log(worker)[-3000:]}")
    assert_klaviyo_matches(after, sandbox, within=30)


def test_a_live_write_that_overtakes_a_repair_is_followed_by_the_newest_state(
    start_worker: WorkerFactory, publish: Callable[..., None], sandbox: SandboxThread
) -> None:
    worker, email, newer, after = synced_customer_about_to_change(start_worker, publish, sandbox)
    # The repair's profile write for this customer (no live write for it is due) is held 8 s.
    fault = sandbox.admin("POST", "faults", json={"endpoint": "/api/profile-import", "method": "POST",
                                                  "email": email, "delay": 8, "count": 1})
    wait_for_a_round_to_end(worker)
    plant_drift(sandbox, email)
    wait_until(lambda: not sandbox.admin("GET", "faults"), within=60,
               what="the reconcile's repair write to reach the sandbox")
    publish([newer])  # live delivery writes the new state while the repair's older one is held

    held: dict[str, Any] = wait_until(
        lambda: next((r for r in sandbox.admin("GET", "requests") if r["fault"] == fault["id"]), {}),
        within=30, what="the held repair write to be applied")
    # Applied after live delivery's newer write: the repair sees the newer floor and writes again,
    # well before a later reconcile round (12 s of grace) could notice.
    try:
        wait_until(lambda: properties(sandbox, email) == after.profiles[email], within=8, every=0.1,
                   what=f"the newest state after the held repair write ({held['at']})")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{reconcile_log(worker)[-3000:]}") from None
    assert_klaviyo_matches(after, sandbox, within=30)


def synced_customer_about_to_change(
    start_worker: WorkerFactory, publish: Callable[..., None], sandbox: SandboxThread
) -> tuple[ChildProcess, str, ReturnEvent, Expected]:
    """A worker with a slow reconcile grace, its customers in Klaviyo, and for one of them a
    new event not yet published, with what Klaviyo must hold once it is."""
    events = demo_events(8, seed=21)
    worker = start_worker(env=SLOW_GRACE)
    publish(events)
    assert_klaviyo_matches(expected_klaviyo(events), sandbox, within=90)
    email = events[0].customer.email
    newer = another_return(events, email)
    return worker, email, newer, expected_klaviyo([*events, newer])


def another_return(events: list[ReturnEvent], email: str) -> ReturnEvent:
    """A new return requested by this customer after all of its events: its state moves on."""
    last = max((event for event in events if event.customer.email == email), key=lambda e: e.occurred_at)
    item = ReturnItem(sku="SKU-LATE", product_name="Late parcel", quantity=1, value=Decimal("12.50"))
    return replace(last, event_id="test:late-return:requested", type=EventType.RETURN_REQUESTED,
                   occurred_at=last.occurred_at + timedelta(days=3), return_id="RMA-LATE",
                   order_ref="#LATE", status_raw="requested", outcome=None, new_order_ref=None,
                   amount=Decimal("12.50"), items=(item,))


def plant_drift(sandbox: SandboxThread, email: str) -> None:
    count = sandbox.profiles()[email]["properties"]["returns_count"]
    sandbox.admin("POST", "profiles", json={"email": email, "merge": True,
                                             "properties": {"returns_count": count + 40}})


def properties(sandbox: SandboxThread, email: str) -> dict[str, Any]:
    got = sandbox.profiles()[email]["properties"]
    return {key: value for key, value in got.items() if key.startswith("returns_")}


def wait_for_request(sandbox: SandboxThread, method: str, path: str, *, after: datetime,
                     what: str) -> dict[str, Any]:
    """The first request the sandbox received after `after` (so it saw everything done before)."""
    def find() -> dict[str, Any] | None:
        return next((r for r in sandbox.admin("GET", "requests")
                     if (r["method"], r["path"]) == (method, path) and received(r) > after), None)

    return wait_until(find, within=60, what=what)  # type: ignore[arg-type]


def received(request: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(request["received_at"] or request["at"])


def wait_for_a_round_to_end(worker: ChildProcess) -> None:
    """Until the worker logs the end of a reconcile round that was running (or began) now."""
    rounds = reconcile_log(worker).count("reconcile compared=")
    wait_until(lambda: reconcile_log(worker).count("reconcile compared=") > rounds, within=60,
               what="a reconcile round to end")


def reconcile_log(worker: ChildProcess) -> str:
    lines = worker.log_file.read_text(errors="replace").splitlines()
    return "\n".join(line for line in lines if "reconcile" in line and "worker starting" not in line)
