"""Klaviyo delivery under failure, against the real broker, sandbox and worker processes:
outages lose nothing, 429s are waited out as Retry-After says, permanent errors are
dead-lettered without holding anyone else up, 401 pauses instead of burning the backlog.

Helpers shared by the other test_delivery_* modules live here too.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import orjson
import pytest

from streams.demo import demo_events
from streams.events import Customer, EventType, ReturnEvent
from tests.integration.conftest import WorkerFactory
from tests.integration.harness import (
    SandboxThread,
    expected_klaviyo,
    profile_differences,
    read_topic,
    wait_until,
)


def sandbox_for(request: pytest.FixtureRequest) -> Iterator[SandboxThread]:
    """`parametrize("sandbox", [{...}], indirect=True)` passes options; default: no rate limits."""
    options = getattr(request, "param", None) or {"rate_limit_scale": 0}
    server = SandboxThread(**options).start()
    yield server
    server.stop()


@pytest.fixture
def sandbox(request: pytest.FixtureRequest) -> Iterator[SandboxThread]:
    """Overrides conftest's, so a test can ask for a sandbox with Klaviyo's rate limits."""
    yield from sandbox_for(request)


WARMUP = ReturnEvent(
    event_id="warmup:1", type=EventType.STORE_CREDIT_ISSUED,
    occurred_at=datetime(2026, 9, 1, tzinfo=UTC), customer=Customer(email="warm.up@returnsync-demo.com"),
    amount=Decimal("5.00"), currency="USD",
)


def more_credit(events: list[ReturnEvent], customers: int, *, tag: str = "more") -> list[ReturnEvent]:
    """A new store credit for the first `customers` customers of `events`: later changes to
    existing profiles. (Other demo seeds reuse external ids under other emails: a real 409.)"""
    chosen = list(dict.fromkeys(event.customer for event in events))[:customers]
    last = max(event.occurred_at for event in events)
    return [ReturnEvent(event_id=f"{tag}:{index}", type=EventType.STORE_CREDIT_ISSUED, customer=customer,
                        occurred_at=last + timedelta(hours=index + 1), amount=Decimal("7.50"), currency="USD")
            for index, customer in enumerate(chosen)]


def backlog_through_outage(
    sandbox: SandboxThread, publish: Callable[..., None], events: list[ReturnEvent], worker: Any
) -> None:
    """Deliver a warm-up event first (the sync consumer is then running), then hold Klaviyo down
    until the worker has folded all of `events` into its outbox: whatever the first retried batch
    held, the rest goes as one backlog, however slow the machine. Expectations must include WARMUP."""
    publish([WARMUP])
    wait_until(lambda: sandbox.event_keys() >= expected_klaviyo([WARMUP]).events, within=90,
               what="the warm-up event to be delivered")
    outage = sandbox.admin("POST", "faults", json={"status": 503, "seconds": 300})
    publish(events)
    wait_until(lambda: processed(worker) >= 1 + len(events), within=120,
               what=f"{1 + len(events)} events folded by the worker")
    sandbox.admin("DELETE", f"faults/{outage['id']}")


def processed(worker: Any) -> float:
    """Events through the reducer so far, whatever their result."""
    text = httpx.get(f"{worker.web_url}/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("returnsync_events_processed_total{"))


def requests_log(sandbox: SandboxThread) -> list[dict[str, Any]]:
    return list(sandbox.admin("GET", "requests"))


def endpoint(record: dict[str, Any]) -> str:
    """A request's endpoint, with job ids folded: `GET /api/profile-bulk-import-jobs/{id}`."""
    parts = record["path"].rstrip("/").split("/")
    if len(parts) > 3 and parts[2] == "profile-bulk-import-jobs":
        parts[3] = "{id}"
    return f"{record['method']} {'/'.join(parts)}"


def at(record: dict[str, Any]) -> float:
    """When the sandbox answered."""
    return datetime.fromisoformat(record["at"]).timestamp()


def received(record: dict[str, Any]) -> float:
    """When the request reached the sandbox."""
    return datetime.fromisoformat(record["received_at"]).timestamp()


def sync_dead_letters(
    bootstrap_servers: str, prefix: str, at_least: int, within: float
) -> list[dict[str, Any]]:
    records = read_topic(bootstrap_servers, prefix + "returns.deadletter", at_least=at_least, within=within)
    return [letter for r in records if (letter := orjson.loads(r.value))["stage"] == "sync"]


def metric_value(worker: Any, name: str, labels: str) -> float | None:
    text = httpx.get(f"{worker.web_url}/metrics", timeout=10).text
    sample = f"{name}{{{labels}}} " if labels else f"{name} "
    for line in text.splitlines():
        if line.startswith(sample):
            return float(line.rsplit(" ", 1)[1])
    return None


def converged(
    expected: Any, sandbox: SandboxThread, *, within: float, skip: frozenset[str] = frozenset()
) -> None:
    wanted_events = {key for key in expected.events if key[0] not in skip}
    wait_until(lambda: sandbox.event_keys() >= wanted_events, within=within,
               what=f"{len(wanted_events)} timeline events in the sandbox")
    for email in skip:
        expected.profiles.pop(email, None)
    differences: list[str] = []

    def equal() -> bool:
        differences[:] = profile_differences(expected, sandbox)
        return not differences

    try:
        wait_until(equal, within=30, what="sandbox profiles equal to the reducer's state")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {len(differences)} differ, e.g. {differences[:2]}") from None


def test_klaviyo_outage_loses_nothing(
    start_worker: WorkerFactory, publish: Callable[..., None], sandbox: SandboxThread,
    bootstrap_servers: str, prefix: str,
) -> None:
    events = demo_events(60, seed=21)
    expected = expected_klaviyo(events)
    start_worker()
    sandbox.admin("POST", "faults", json={"status": 503, "seconds": 6})
    publish(events)
    wait_until(lambda: any(r["status"] == 503 for r in requests_log(sandbox)), within=60,
               what="deliveries to meet the outage")
    converged(expected, sandbox, within=120)
    assert sandbox.event_keys() == expected.events
    statuses = [r["status"] for r in requests_log(sandbox)]
    assert statuses.count(503) >= 3, "the outage was real"
    assert sync_dead_letters(bootstrap_servers, prefix, at_least=0, within=1) == []


def test_429_storm_waits_out_retry_after_on_every_endpoint(
    start_worker: WorkerFactory, publish: Callable[..., None], sandbox: SandboxThread
) -> None:
    events = demo_events(60, seed=22)
    expected = expected_klaviyo(events)
    start_worker(env={"RETURNSYNC_SYNC_BATCH_SIZE": "40"})
    sandbox.admin("POST", "faults", json={"status": 429, "retry_after": 3, "seconds": 60})
    publish(events)

    def storm_rounds() -> float:
        times = [at(r) for r in requests_log(sandbox) if r["status"] == 429]
        return max(times) - min(times) if times else 0.0

    wait_until(lambda: storm_rounds() >= 6, within=60, what="three rounds of 429s")
    sandbox.admin("DELETE", "faults")
    converged(expected, sandbox, within=120)
    log = requests_log(sandbox)
    throttles = [r for r in log if r["status"] == 429]
    assert len({endpoint(t) for t in throttles}) >= 2, "the storm hit more than one endpoint"
    # Requests that got their token before a 429 came back may still reach the sandbox a little
    # later (connection set-up, a busy worker); a retry that ignored Retry-After would land
    # anywhere in the 3 s, as backoff with jitter does.
    in_flight = 0.75
    for throttle in throttles:
        too_early = [r for r in log if endpoint(r) == endpoint(throttle)
                     and at(throttle) + in_flight < received(r) < at(throttle) + 3 - 0.05]
        assert not too_early, f"sent before Retry-After ran out: {throttle} then {too_early[:3]}"
    last = max(at(t) for t in throttles)
    assert any(received(r) >= last + 3 - 0.05 and r["status"] in (200, 201, 202) for r in log)


@pytest.mark.parametrize("batch_size", ["20", "5000"], ids=["single-endpoints", "bulk-endpoints"])
def test_permanent_409_is_dead_lettered_and_blocks_nobody_else(
    start_worker: WorkerFactory, publish: Callable[..., None], sandbox: SandboxThread,
    bootstrap_servers: str, prefix: str, batch_size: str,
) -> None:
    events = demo_events(150, seed=23)
    expected = expected_klaviyo(events)
    victim = events[len(events) // 2].customer.email
    worker = start_worker(env={"RETURNSYNC_SYNC_BATCH_SIZE": batch_size})
    sandbox.admin("POST", "faults", json={"status": 409, "email": victim})
    if batch_size == "5000":  # the backlog goes out in big batches
        expected = expected_klaviyo([WARMUP, *events])
        backlog_through_outage(sandbox, publish, events, worker)
    else:
        publish(events)
    converged(expected, sandbox, within=120, skip=frozenset({victim}))
    assert victim not in sandbox.profiles()
    letters = sync_dead_letters(bootstrap_servers, prefix, at_least=1, within=30)
    assert letters and all(letter["reason"] == "klaviyo_rejected" for letter in letters)
    assert all(victim in orjson.dumps(letter["original"]).decode() for letter in letters)
    assert all("A profile already exists with one of these identifiers." in letter["error"]
               for letter in letters)
    assert any(letter["original"]["klaviyo_errors"][0]["code"] == "duplicate_profile" for letter in letters)
    if batch_size == "5000":
        paths = {endpoint(r) for r in requests_log(sandbox)}
        assert "POST /api/profile-bulk-import-jobs" in paths, "the bulk path was exercised"


def test_401_pauses_the_account_and_resumes_when_the_key_works(
    start_worker: WorkerFactory, publish: Callable[..., None], sandbox: SandboxThread,
    bootstrap_servers: str, prefix: str,
) -> None:
    events = demo_events(30, seed=24)
    expected = expected_klaviyo(events)
    sandbox.admin("POST", "faults", json={"status": 401})
    worker = start_worker(env={"RETURNSYNC_KLAVIYO_AUTH_PAUSE_SECONDS": "1"})
    publish(events)
    wait_until(lambda: metric_value(worker, "returnsync_klaviyo_auth_failed", 'tenant="default"') == 1.0,
               within=60, what="returnsync_klaviyo_auth_failed{tenant=default} 1")

    def probes() -> list[float]:
        """401s after the first wave (requests already past the gate when it closed)."""
        times = sorted(received(r) for r in requests_log(sandbox) if r["status"] == 401)
        return [t for t in times if t > times[0] + 2] if times else []

    found = wait_until(lambda: len(probes()) >= 4 and probes(), within=30,
                       what="the account to be probed again")
    gaps = [later - earlier for earlier, later in itertools.pairwise(found)]
    assert min(gaps) >= 0.8, f"one probe per 1 s pause, not a storm: {gaps}"
    assert sandbox.profiles() == {} and sandbox.events() == []
    assert sync_dead_letters(bootstrap_servers, prefix, at_least=0, within=1) == []

    sandbox.admin("DELETE", "faults")
    converged(expected, sandbox, within=60)
    wait_until(lambda: metric_value(worker, "returnsync_klaviyo_auth_failed", 'tenant="default"') == 0.0,
               within=30, what="returnsync_klaviyo_auth_failed{tenant=default} back to 0")
    assert sync_dead_letters(bootstrap_servers, prefix, at_least=0, within=1) == []


def test_a_worker_stopped_while_a_batch_waits_on_klaviyo_exits_by_itself_and_loses_nothing(
    start_worker: WorkerFactory, publish: Callable[..., None], sandbox: SandboxThread,
) -> None:
    """SIGTERM while a batch is retried against an outage: the batch is given up (it was never
    committed), the worker stops by itself instead of going on delivering until it is killed,
    and the next start delivers everything."""
    events = demo_events(40, seed=31)
    expected = expected_klaviyo([WARMUP, *events])
    worker = start_worker()
    publish([WARMUP])
    wait_until(lambda: sandbox.event_keys() >= expected_klaviyo([WARMUP]).events, within=90,
               what="the warm-up event to be delivered")
    outage = sandbox.admin("POST", "faults", json={"status": 503, "seconds": 300})
    publish(events)
    wait_until(lambda: (metric_value(worker, "returnsync_sync_backlog", "") or 0) > 0, within=90,
               what="a batch in flight against the outage")
    worker.stop(within=20)
    assert worker.process is not None
    assert worker.process.returncode == 0, (
        f"SIGTERM must stop the worker by itself, not after a kill: exit {worker.process.returncode}\n"
        f"{worker.log_tail()}")
    sandbox.admin("DELETE", f"faults/{outage['id']}")
    start_worker()
    converged(expected, sandbox, within=120)
    assert sandbox.event_keys() == expected.events


def test_events_flowing_through_rebalances_all_reach_klaviyo(
    start_worker: WorkerFactory, publish: Callable[..., None], sandbox: SandboxThread,
) -> None:
    """A second worker joins and later leaves while events keep coming. The sync consumer gets
    records of its new assignment while the rebalance is still being handled (aiokafka hands the
    partitions to the fetcher first); dropping those without rewinding skipped them for good."""
    events = demo_events(500, seed=33)
    expected = expected_klaviyo(events)
    start_worker(index=0)
    chunks = [events[start:start + 5] for start in range(0, len(events), 5)]

    def trickle() -> None:  # in order, so each customer's events stay in order
        for chunk in chunks:
            publish(chunk)

    flowing = threading.Thread(target=trickle)
    flowing.start()
    try:
        second = start_worker(index=1)  # its join rebalances the group under load
        second.stop()  # and its leaving, again
    finally:
        flowing.join(120)
    assert not flowing.is_alive(), "publishing did not finish"
    converged(expected, sandbox, within=180)
    assert sandbox.event_keys() == expected.events
