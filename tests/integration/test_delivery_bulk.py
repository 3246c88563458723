"""Volume: a backlog goes out through the bulk endpoints, import errors are dead-lettered, real
(scaled) rate limits are kept before any 429, and no request ever touches consent."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterator

import httpx
import pytest

from streams.demo import demo_events
from tests.integration.conftest import WorkerFactory
from tests.integration.harness import SANDBOX_KEY, SandboxThread, expected_klaviyo
from tests.integration.test_delivery import (
    WARMUP,
    backlog_through_outage,
    converged,
    endpoint,
    more_credit,
    requests_log,
    sandbox_for,
    sync_dead_letters,
    wait_until,
)

BULK = {"POST /api/profile-bulk-import-jobs", "GET /api/profile-bulk-import-jobs/{id}",
        "POST /api/event-bulk-create-jobs"}
SINGLE = {"POST /api/profile-import", "POST /api/events"}
ALLOWED = BULK | SINGLE | {"GET /api/profile-bulk-import-jobs/{id}/import-errors"}


def klaviyo_post(sandbox: SandboxThread, path: str, body: dict) -> httpx.Response:
    """What another integration on the same Klaviyo account would send."""
    return httpx.post(f"{sandbox.url}{path}", json=body, timeout=10, headers={
        "Authorization": f"Klaviyo-API-Key {SANDBOX_KEY}", "revision": "2026-07-15"})


@pytest.fixture
def sandbox(request: pytest.FixtureRequest) -> Iterator[SandboxThread]:
    yield from sandbox_for(request)


# Known flaky at 6 partitions (README, Known issues): the batch in flight when the outage starts
# may already hold ~75 customers, which go one by one within the burst budget; reruns show in the report.
@pytest.mark.flaky(reruns=2)
def test_backlog_goes_bulk_and_import_errors_are_dead_lettered(
    start_worker: WorkerFactory, publish: Callable[..., None], sandbox: SandboxThread,
    bootstrap_servers: str, prefix: str,
) -> None:
    events = demo_events(200, seed=31)
    expected = expected_klaviyo([WARMUP, *events])
    # The customer of the newest event: its last record is in the backlog, so it goes bulk.
    customer = events[-1].customer
    conflicted = customer.email
    # Klaviyo's 409: the email is one profile, the external_id already another's (a different
    # integration gave it to someone else). Bulk import reports it as an import-error row.
    sandbox.admin("POST", "profiles", json={"email": conflicted, "properties": {"vip": True}})
    planted = klaviyo_post(sandbox, "/api/profile-import", {"data": {"type": "profile", "attributes": {
        "email": "someone.else@elsewhere-shop.com", "external_id": customer.external_id}}})
    assert planted.status_code == 201, planted.text
    worker = start_worker(env={"RETURNSYNC_SYNC_BATCH_SIZE": "5000"})
    backlog_through_outage(sandbox, publish, events, worker)
    converged(expected, sandbox, within=120, skip=frozenset({conflicted}))

    wanted = BULK | {"GET /api/profile-bulk-import-jobs/{id}/import-errors"}
    wait_until(lambda: wanted <= {endpoint(r) for r in requests_log(sandbox)}, within=30,
               what=f"requests to {wanted}")
    accepted = Counter(endpoint(r) for r in requests_log(sandbox) if r["status"] in (200, 201, 202))
    assert accepted["POST /api/profile-import"] < 75, f"profiles went in bulk, not one by one: {accepted}"
    letters = sync_dead_letters(bootstrap_servers, prefix, at_least=1, within=30)
    import_errors = [letter for letter in letters if letter["reason"] == "klaviyo_import_error"]
    assert import_errors, letters
    for letter in import_errors:
        row = letter["original"]
        assert row["type"] == "import-error" and row["attributes"]["code"] == "duplicate_profile"
        assert row["attributes"]["original_payload"]["attributes"]["email"] == conflicted
        assert letter["error"].startswith("klaviyo import error duplicate_profile")
    assert sandbox.profiles()[conflicted]["properties"] == {"vip": True}, "the refused write stayed out"


def test_no_request_ever_targets_consent_after_bulk_and_single_runs(
    start_worker: WorkerFactory, publish: Callable[..., None], sandbox: SandboxThread
) -> None:
    first = demo_events(150, seed=32)
    later = more_credit(first, 4)
    worker = start_worker(env={"RETURNSYNC_SYNC_BATCH_SIZE": "5000"})
    backlog_through_outage(sandbox, publish, first, worker)
    converged(expected_klaviyo([WARMUP, *first]), sandbox, within=120)
    publish(later)
    converged(expected_klaviyo([WARMUP, *first, *later]), sandbox, within=60)

    log = requests_log(sandbox)
    used = {endpoint(r) for r in log}
    assert used >= BULK and used >= SINGLE, used
    assert used <= ALLOWED, f"unexpected Klaviyo endpoints: {used - ALLOWED}"
    assert not [r for r in log if re.search(r"subscri|suppress|consent", r["path"], re.IGNORECASE)]
    assert sandbox.admin("GET", "violations") == []
    assert {r["account"] for r in log} == {"default"}


# Once seen leaving one profile at an older state, not since (README, Known issues); reruns keep
# a recurrence visible in the report.
@pytest.mark.flaky(reruns=2)
@pytest.mark.parametrize("sandbox", [{"rate_limit_scale": 0.2}], indirect=True)
def test_scaled_real_rate_limits_are_kept_before_any_429(
    start_worker: WorkerFactory, publish: Callable[..., None], sandbox: SandboxThread
) -> None:
    """At a fifth of Klaviyo's limits, small batches outrun profile-import's budget (15/s,
    150/m), so the planner moves to bulk when the singles would have to wait."""
    events = demo_events(80, seed=34)
    start_worker(env={"KLAVIYO_RATE_LIMIT_SCALE": "0.2", "RETURNSYNC_SYNC_BATCH_SIZE": "12"})
    publish(events)
    converged(expected_klaviyo(events), sandbox, within=180)
    log = requests_log(sandbox)
    statuses = Counter(r["status"] for r in log)
    assert statuses[429] == 0, statuses
    used = Counter(endpoint(r) for r in log)
    assert used["POST /api/profile-import"] >= 15 and used["POST /api/profile-bulk-import-jobs"] >= 1, used
