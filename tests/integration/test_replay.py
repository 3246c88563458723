"""`returnsync replay` rebuilds Klaviyo from returns.events: determinism, resume, dry-run drift."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import orjson
from aiokafka import AIOKafkaProducer

from agents.commands.publish import event_records
from agents.devstack.processes import ChildProcess
from streams.demo import demo_events
from streams.events import DEFAULT_TENANT, customer_key, customer_ref
from streams.partitioning import expected_partition
from streams.projection import ProjectionConfig, klaviyo_events
from tests.integration.conftest import PARTITIONS, WorkerFactory
from tests.integration.harness import (
    SANDBOX_KEY,
    Expected,
    SandboxThread,
    expected_klaviyo,
    profile_differences,
    wait_until,
)

EVENT_PATHS = ("/api/events", "/api/event-bulk-create-jobs")
PROFILE_PATHS = ("/api/profile-import", "/api/profile-bulk-import-jobs")


def cli_env(bootstrap_servers: str, sandbox: SandboxThread, prefix: str) -> dict[str, str]:
    return {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap_servers,
        "KLAVIYO_BASE_URL": sandbox.url,
        "KLAVIYO_API_KEY": SANDBOX_KEY,
        "RETURNSYNC_APP_ID": f"{prefix}returnsync",
        "RETURNSYNC_TOPIC_PREFIX": prefix,
    }


def returnsync(args: list[str], env: dict[str, str], within: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agents.commands.cli", *args], env={**os.environ, **env},
        capture_output=True, text=True, timeout=within, check=False,
    )


def backfilled(expected: Expected) -> set[tuple[str, str, str, bool]]:
    return {(email, metric, unique_id, True) for email, metric, unique_id, _ in expected.events}


def items_sent(sandbox: SandboxThread, paths: tuple[str, ...] = EVENT_PATHS) -> int:
    """Items carried by accepted requests to `paths` (the sandbox stores each unique_id once)."""
    return sum(r["items"] for r in sandbox.admin("GET", "requests")
               if r["method"] == "POST" and r["path"] in paths and r["status"] and r["status"] < 300)


def events_sent(sandbox: SandboxThread) -> int:
    return items_sent(sandbox, EVENT_PATHS)


def test_replay_after_wipe_rebuilds_profiles_and_backfilled_timeline(
    start_worker: WorkerFactory, publish: Callable[..., None], sandbox: SandboxThread,
    bootstrap_servers: str, prefix: str,
) -> None:
    events = demo_events(60, seed=21)
    expected = expected_klaviyo(events)
    start_worker()
    publish(events)
    wait_until(lambda: sandbox.event_keys() >= expected.events, within=90, what="live delivery")
    wait_until(lambda: not profile_differences(expected, sandbox), within=30, what="live profiles")

    sandbox.admin("POST", "reset", json={})
    assert not sandbox.profiles() and not sandbox.events()
    done = returnsync(["replay", "--from-beginning", "--batch-size", "100"],
                      cli_env(bootstrap_servers, sandbox, prefix))
    assert done.returncode == 0, done.stderr[-3000:]

    assert profile_differences(expected, sandbox) == []
    assert sandbox.event_keys() == backfilled(expected)
    assert events_sent(sandbox) == len(expected.events), "each event sent exactly once"
    assert items_sent(sandbox, PROFILE_PATHS) == len(expected.profiles), "one profile write per customer"

    again = returnsync(["replay", "--from-beginning"], cli_env(bootstrap_servers, sandbox, prefix))
    assert again.returncode == 0, again.stderr[-3000:]
    assert events_sent(sandbox) == len(expected.events), "a finished replay sends nothing again"


def test_replay_killed_halfway_resumes_without_resending_delivered_batches(
    publish: Callable[..., None], sandbox: SandboxThread, bootstrap_servers: str, prefix: str,
    tmp_path: Path,
) -> None:
    events = demo_events(120, seed=8)
    expected = expected_klaviyo(events)
    publish(events)
    # Slow single-event requests so the kill lands mid-replay.
    sandbox.admin("POST", "faults", json={"endpoint": "/api/events", "delay": 0.15})
    batch = 20
    env = cli_env(bootstrap_servers, sandbox, prefix)
    first = ChildProcess(["replay", "--from-beginning", "--batch-size", str(batch)], env,
                         tmp_path / "replay-1.log").start()
    try:
        wait_until(lambda: len(sandbox.events()) > len(expected.events) // 3, within=90,
                   what="a third of the events delivered")
        first.kill()
    finally:
        first.stop(within=5)
    before_kill = events_sent(sandbox)
    assert before_kill < len(expected.events), "the kill must land mid-replay"

    sandbox.admin("DELETE", "faults")
    done = returnsync(["replay", "--from-beginning", "--batch-size", str(batch)], env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "already delivered before" in done.stderr and "(0 already" not in done.stderr, done.stderr[-500:]

    assert profile_differences(expected, sandbox) == []
    assert sandbox.event_keys() == backfilled(expected)
    # Resent at most what was in flight at the kill: the pipeline's 2 settling batches + 1 sending.
    per_record = max(len(klaviyo_events(event, ProjectionConfig())) for event in events)
    resent = events_sent(sandbox) - len(expected.events)
    assert 0 <= resent <= 3 * batch * per_record, f"{resent} events sent twice"


def test_dry_run_reports_exactly_the_planted_drift_and_writes_nothing(
    publish: Callable[..., None], sandbox: SandboxThread, bootstrap_servers: str, prefix: str,
) -> None:
    events = demo_events(30, seed=4)
    expected = expected_klaviyo(events)
    publish(events)
    env = cli_env(bootstrap_servers, sandbox, prefix)
    rebuilt = returnsync(["replay", "--from-beginning"], env)
    assert rebuilt.returncode == 0, rebuilt.stderr[-3000:]
    assert profile_differences(expected, sandbox) == [], rebuilt.stderr[-3000:]

    clean = returnsync(["replay", "--from-beginning", "--dry-run"], env)
    assert clean.returncode == 0, clean.stdout + clean.stderr[-2000:]
    assert f"compared {len(expected.profiles)} profiles: 0 drifted" in clean.stdout

    first, second = sorted(expected.profiles)[:2]
    count = expected.profiles[first]["returns_count"]
    sandbox.admin("POST", "profiles", json={"email": first, "merge": True,
                                             "properties": {"returns_count": count + 7}})
    sandbox.admin("POST", "profiles", json={"email": second, "merge": True,
                                             "properties": {"returns_active": "maybe",
                                                            "returns_refund_total": 123456}})
    logged = len(sandbox.admin("GET", "requests"))
    drifted = returnsync(["replay", "--from-beginning", "--dry-run"], env)
    assert drifted.returncode == 1, drifted.stdout + drifted.stderr[-2000:]
    report = drifted.stdout
    assert f"compared {len(expected.profiles)} profiles: 2 drifted" in report, drifted.stderr[-3000:]
    assert "  returns_count: 1\n" in report and "  returns_active: 1\n" in report, report
    assert "  returns_refund_total: 1\n" in report, report
    assert first not in report and second not in report, "customers are hashes unless asked"
    assert customer_ref(customer_key(DEFAULT_TENANT, first)) in report, report

    as_json = returnsync(["replay", "--from-beginning", "--dry-run", "--json", "--show-customers"], env)
    assert as_json.returncode == 1, as_json.stdout + as_json.stderr[-2000:]
    document = orjson.loads(as_json.stdout)
    assert document["repair"] is None
    assert {k: document["drift"][k] for k in ("compared", "drifted")} == {
        "compared": len(expected.profiles), "drifted": 2}
    assert document["drift"]["per_property"] == {"returns_count": 1, "returns_active": 1,
                                                 "returns_refund_total": 1}
    assert {example["customer"] for example in document["drift"]["examples"]} == {first, second}
    new = sandbox.admin("GET", "requests")[logged:]
    assert new and all((r["method"], r["path"]) == ("GET", "/api/profiles") for r in new), new

    repaired = returnsync(["reconcile", "--sample", "0", "--repair", "--json"], env)
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr[-2000:]
    document = orjson.loads(repaired.stdout)
    assert document["drift"]["drifted"] == 2 and document["repair"]["repaired"] == 2
    assert document["repair"]["resolved"] is True
    assert profile_differences(expected, sandbox) == []


def test_time_range_sends_only_its_events_with_each_customers_newest_profile(
    sandbox: SandboxThread, bootstrap_servers: str, prefix: str, create_topics: Callable[[], None],
) -> None:
    events = demo_events(30, seed=12)
    half = len(events) // 2
    old, recent = events[:half], events[half:]
    march, june = datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 6, 1, tzinfo=UTC)

    async def produce() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers, acks="all")
        await producer.start()
        try:
            for stamp, part in ((datetime(2026, 1, 1, tzinfo=UTC), old), (june, recent)):
                for key, value in event_records(part):
                    await producer.send_and_wait(prefix + "returns.events", value, key=key,
                                                 timestamp_ms=int(stamp.timestamp() * 1000))
        finally:
            await producer.stop()

    create_topics()
    asyncio.run(produce())
    done = returnsync(["replay", "--since", march.isoformat(), "--until", "2026-07-01T00:00:00Z",
                       "--name", "spring"], cli_env(bootstrap_servers, sandbox, prefix))
    assert done.returncode == 0, done.stderr[-3000:]

    whole = expected_klaviyo(events)  # profiles carry the newest state, built from the beginning
    in_range = expected_klaviyo(events)
    recent_ids = {item.unique_id for event in recent for item in klaviyo_events(event, ProjectionConfig())}
    in_range.events = {(e, m, u, True) for e, m, u, _ in whole.events if u in recent_ids}
    touched = {event.customer.email for event in recent}
    in_range.profiles = {email: p for email, p in whole.profiles.items() if email in touched}
    assert touched != set(whole.profiles), "some customers only have events before the range"
    assert sandbox.event_keys() == in_range.events
    assert set(sandbox.profiles()) == touched
    assert profile_differences(in_range, sandbox) == []


def test_offset_range_of_chosen_partitions_sends_only_their_customers(
    publish: Callable[..., None], sandbox: SandboxThread, bootstrap_servers: str, prefix: str,
) -> None:
    events = demo_events(30, seed=5)
    publish(events)
    chosen = [e for e in events if expected_partition(e.customer_key.encode(), PARTITIONS) in (0, 2)]
    assert 0 < len(chosen) < len(events)
    done = returnsync(["replay", "--from-offset", "0:0,2:0", "--name", "p02"],
                      cli_env(bootstrap_servers, sandbox, prefix))
    assert done.returncode == 0, done.stderr[-3000:]
    expected = expected_klaviyo(chosen)
    assert sandbox.event_keys() == backfilled(expected)
    assert profile_differences(expected, sandbox) == [] and len(sandbox.profiles()) == len(expected.profiles)


def test_tenant_option_replays_only_that_tenants_customers(
    publish: Callable[..., None], sandbox: SandboxThread, bootstrap_servers: str, prefix: str,
) -> None:
    acme, others = demo_events(15, seed=31, tenant="acme"), demo_events(15, seed=32)
    assert not {e.customer.email for e in acme} & {e.customer.email for e in others}
    publish(acme + others)
    done = returnsync(["replay", "--from-beginning", "--tenant", "acme", "--name", "acme"],
                      cli_env(bootstrap_servers, sandbox, prefix))
    assert done.returncode == 0, done.stderr[-3000:]
    expected = expected_klaviyo(acme)
    assert sandbox.event_keys() == backfilled(expected)
    assert set(sandbox.profiles()) == set(expected.profiles)
    assert profile_differences(expected, sandbox) == []


def test_reconcile_repair_never_writes_an_older_state_than_live_delivery_did(
    start_worker: WorkerFactory, publish: Callable[..., None], sandbox: SandboxThread,
    bootstrap_servers: str, prefix: str, tmp_path: Path,
) -> None:
    from tests.integration.test_reconcile_scheduled import another_return, plant_drift, properties

    events = demo_events(8, seed=21)
    start_worker()  # live delivery
    publish(events)
    wait_until(lambda: not profile_differences(expected_klaviyo(events), sandbox), within=90,
               what="live delivery")
    email = events[0].customer.email
    newer = another_return(events, email)
    after = expected_klaviyo([*events, newer])
    plant_drift(sandbox, email)
    # The CLI's read of Klaviyo is held: its scan is done, so what it derived is now older than
    # what live delivery writes meanwhile.
    sandbox.admin("POST", "faults", json={"endpoint": "/api/profiles", "method": "GET", "delay": 8,
                                          "count": 1})
    env = cli_env(bootstrap_servers, sandbox, prefix)
    cli = ChildProcess(["reconcile", "--sample", "0", "--repair"], env, tmp_path / "reconcile.log").start()
    try:
        wait_until(lambda: not sandbox.admin("GET", "faults"), within=60, what="the CLI reading Klaviyo")
        publish([newer])
        wait_until(lambda: properties(sandbox, email) == after.profiles[email], within=30,
                   what="live delivery to write the customer's new state")
        wait_until(lambda: not cli.running, within=60, what="the reconcile to finish")
    finally:
        cli.stop(within=5)
    output = cli.log_file.read_text()
    assert "1 drifted" in output, output[-3000:]
    assert properties(sandbox, email) == after.profiles[email], f"the repair wrote an older state\n{output}"
    assert "left to live delivery (behind): 1" in output, output[-3000:]
    assert cli.process is not None and cli.process.returncode == 1, output[-3000:]
