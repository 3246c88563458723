"""`returnsync deadletters list | show | redrive` against a real worker, broker and sandbox: what a
misconfiguration dead-lettered reaches Klaviyo once it is fixed, exactly once."""

from __future__ import annotations

import uuid

import orjson

from streams.events import DEFAULT_TENANT, customer_key, customer_ref
from tests.integration.conftest import WorkerFactory
from tests.integration.harness import SandboxThread, expected_klaviyo, profile_differences, wait_until
from tests.integration.test_replay import cli_env, returnsync
from tests.integration.webhook_support import (
    SECRET_ENV,
    SECRETS,
    deliver,
    events_of,
    expected_events,
    fixture,
    read_all,
    unique_email,
)

REDO_FLOW = ("return_created", "return_updated", "return_complete")
WITHOUT_REDO = {name: value for name, value in SECRET_ENV.items() if name != "REDO_WEBHOOK_SECRET"}


def redo_lifecycle(email: str) -> list[tuple[str, bytes, dict[str, str]]]:
    """One customer's Redo return, with ids of its own."""
    ids = {"customer@example.com": email, "664f65d4c5a4ca3eff4b4e4": uuid.uuid4().hex[:23],
           "587364902131": str(uuid.uuid4().int)[:12]}
    return [fixture("redo", name, ids) for name in REDO_FLOW]


def klaviyo_of(sandbox: SandboxThread, email: str) -> tuple[object, set[tuple[str, str, str, bool]]]:
    """The customer's profile properties and timeline (a rewrite of the same profile only moves
    its `updated` stamp)."""
    profile = sandbox.profiles().get(email)
    return (profile or {}).get("properties"), events_of(sandbox, {email})


def test_webhooks_refused_for_a_missing_secret_reach_klaviyo_once_it_is_fixed(
    start_worker: WorkerFactory, sandbox: SandboxThread, bootstrap_servers: str, prefix: str,
) -> None:
    email = unique_email("redrive")
    deliveries = redo_lifecycle(email)
    worker = start_worker(env={"RETURNSYNC_DEV": "0", **WITHOUT_REDO})
    url = worker.web_url  # type: ignore[attr-defined]
    answers = [deliver(url, source, body, headers) for source, body, headers in deliveries]
    forged = deliver(url, "redo", deliveries[0][1], secret="not-the-secret")
    assert [a.status_code for a in [*answers, forged]] == [403, 403, 403, 403]
    env = cli_env(bootstrap_servers, sandbox, prefix)
    wait_until(lambda: len(read_all(bootstrap_servers, prefix + "returns.deadletter")) == 4, within=30,
               what="the four refused webhooks kept")

    listed = returnsync(["deadletters", "list", "--json"], env)
    assert listed.returncode == 0, listed.stderr
    report = orjson.loads(listed.stdout)
    assert report["counts"] == [{"stage": "webhook", "reason": "no_secret", "count": 4}]
    assert email not in listed.stdout, "no customer email unless --show-customers"
    assert "Bearer" not in listed.stdout and SECRETS["redo"] not in listed.stdout
    shown = returnsync(["deadletters", "show", report["entries"][0]["ref"]], env)
    assert shown.returncode == 0 and "<email>" in shown.stdout and email not in shown.stdout, shown.stdout

    # The CLI verifies with its own configuration: still without the secret, nothing can go.
    unfixed = returnsync(["deadletters", "redrive", "--dry-run"], env)
    assert unfixed.stdout.count("REDO_WEBHOOK_SECRET is still not configured") == 4, unfixed.stdout

    # The fix: the secret, in the worker and in the operator's environment.
    worker.stop(within=20)
    start_worker(index=1, env={"RETURNSYNC_DEV": "0", **SECRET_ENV})
    fixed = {**env, **SECRET_ENV}
    dry = returnsync(["deadletters", "redrive", "--dry-run"], fixed)
    assert "3 dead letters would be re-driven, 1 cannot be" in dry.stdout, dry.stdout
    assert f"-> {prefix}returns.raw: 3 dead letters, 3 records" in dry.stdout, dry.stdout
    assert klaviyo_of(sandbox, email) == (None, set()), "a dry run publishes nothing"

    done = returnsync(["deadletters", "redrive", "--wait", "90"], fixed, within=180)
    assert "re-driven: 3 dead letters (3 records); not re-drivable: 1; failed again: 0" in done.stdout, (
        done.stdout + done.stderr)
    assert "the signature does not match REDO_WEBHOOK_SECRET" in done.stdout  # the forged one stays out
    assert done.returncode == 1, "something was left: the exit code says so"
    expected = expected_klaviyo(expected_events(deliveries))
    wait_until(lambda: events_of(sandbox, {email}) == expected.events
               and not profile_differences(expected, sandbox),
               within=60, what="Klaviyo equal to one delivery of each re-driven webhook")
    before = klaviyo_of(sandbox, email)

    # Recorded: listed as re-driven, skipped by the next redrive; forced again, Klaviyo is unchanged.
    relisted = orjson.loads(returnsync(["deadletters", "list", "--json"], fixed).stdout)
    assert sum(1 for entry in relisted["entries"] if entry["redriven"]) == 3
    second = returnsync(["deadletters", "redrive", "--wait", "0"], fixed)
    assert "re-driven: 0 dead letters" in second.stdout, second.stdout
    assert "3 already re-driven" in second.stdout, second.stdout
    forced = returnsync(["deadletters", "redrive", "--again", "--wait", "90"], fixed, within=180)
    assert "re-driven: 3 dead letters (3 records)" in forced.stdout, forced.stdout + forced.stderr
    assert "failed again: 0" in forced.stdout, forced.stdout
    assert klaviyo_of(sandbox, email) == before, "re-driving twice changes nothing in Klaviyo"


def test_a_profile_klaviyo_refused_is_derived_again_from_state_once_the_cause_is_gone(
    start_worker: WorkerFactory, sandbox: SandboxThread, bootstrap_servers: str, prefix: str,
) -> None:
    email = unique_email("refused")
    deliveries = redo_lifecycle(email)
    expected = expected_klaviyo(expected_events(deliveries))
    sandbox.admin("POST", "faults", json={"endpoint": "/api/profile-import", "method": "POST", "status": 400,
                                          "email": email, "detail": "phone_number is invalid"})
    url = start_worker(env={"RETURNSYNC_DEV": "0", **SECRET_ENV}).web_url  # type: ignore[attr-defined]
    for source, body, headers in deliveries:
        assert deliver(url, source, body, headers).status_code == 200
    wait_until(lambda: events_of(sandbox, {email}) == expected.events, within=60, what="the timeline")
    env = {**cli_env(bootstrap_servers, sandbox, prefix), **SECRET_ENV}
    wait_until(lambda: "klaviyo_rejected" in returnsync(["deadletters", "list"], env).stdout, within=30,
               what="the refused profile write dead-lettered")
    listed = returnsync(["deadletters", "list"], env).stdout
    assert customer_ref(customer_key(DEFAULT_TENANT, email)) in listed and email not in listed, listed
    assert profile_differences(expected, sandbox), "the profile write was refused"

    sandbox.admin("DELETE", "faults")  # the cause is gone (a data fix on Klaviyo's side, say)
    done = returnsync(["deadletters", "redrive", "--stage", "sync", "--wait", "90"], env, within=180)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "not re-drivable: 0; failed again: 0" in done.stdout, done.stdout
    wait_until(lambda: not profile_differences(expected, sandbox), within=60, what="the profile written")
    assert events_of(sandbox, {email}) == expected.events, "no timeline event twice"


def test_list_filters_and_an_unknown_entry(
    start_worker: WorkerFactory, sandbox: SandboxThread, bootstrap_servers: str, prefix: str,
) -> None:
    url = start_worker(env={"RETURNSYNC_DEV": "0", **WITHOUT_REDO}).web_url  # type: ignore[attr-defined]
    _, body, headers = redo_lifecycle(unique_email("filters"))[0]
    assert deliver(url, "redo", body, headers).status_code == 403
    source, loop_body, loop_headers = fixture("loop", "return_created")
    assert deliver(url, source, loop_body, loop_headers, secret="wrong").status_code == 401
    env = cli_env(bootstrap_servers, sandbox, prefix)
    wait_until(lambda: len(read_all(bootstrap_servers, prefix + "returns.deadletter")) == 2, within=30,
               what="both refused webhooks kept")
    only = orjson.loads(returnsync(["deadletters", "list", "--reason", "bad_signature", "--json"],
                                   env).stdout)
    assert only["counts"] == [{"stage": "webhook", "reason": "bad_signature", "count": 1}]
    later = orjson.loads(returnsync(["deadletters", "list", "--since", "2999-01-01T00:00:00Z", "--json"],
                                    env).stdout)
    assert later["total"] == 0
    missing = returnsync(["deadletters", "show", "0:999999"], env)
    assert missing.returncode == 1 and "not found" in missing.stderr
