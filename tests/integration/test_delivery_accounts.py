"""Several Klaviyo accounts: each tenant's data reaches its own account with its own key, a key
from the accounts file or the environment; one account's 401 pauses only that account."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from klaviyo_sandbox import SandboxServer
from streams.demo import demo_events
from tests.integration.conftest import WorkerFactory
from tests.integration.harness import SANDBOX_KEY, SandboxThread, expected_klaviyo, wait_until
from tests.integration.test_delivery import metric_value, requests_log

KEYS = {SANDBOX_KEY: "default", "pk_acme_0123": "acme", "pk_globex_4567": "globex"}


class AccountsSandbox(SandboxThread):
    def __init__(self) -> None:
        super().__init__(rate_limit_scale=0)
        self.server = SandboxServer(api_keys=KEYS, rate_limit_scale=0)


@pytest.fixture
def sandbox() -> Iterator[SandboxThread]:
    server = AccountsSandbox().start()
    yield server
    server.stop()


def account_profiles(sandbox: SandboxThread, account: str) -> dict[str, dict[str, Any]]:
    found = sandbox.admin("GET", "profiles", params={"account": account})
    return {profile["email"]: profile["properties"] for profile in found}


def test_each_tenant_reaches_its_own_account_and_a_401_pauses_only_that_one(
    start_worker: WorkerFactory, publish: Callable[..., None], sandbox: SandboxThread, tmp_path: Path
) -> None:
    by_account = {
        "default": demo_events(15, seed=41),
        "acme": demo_events(15, seed=42, tenant="acme"),
        "globex": demo_events(15, seed=43, tenant="globex"),
    }
    accounts_file = tmp_path / "klaviyo-accounts.json"
    accounts_file.write_bytes(orjson.dumps({"acme": {"api_key": "pk_acme_0123"}}))
    worker = start_worker(env={"KLAVIYO_ACCOUNTS_FILE": str(accounts_file),
                               "KLAVIYO_API_KEY_GLOBEX": "pk_globex_4567",
                               "RETURNSYNC_KLAVIYO_AUTH_PAUSE_SECONDS": "1"})
    # acme's key stops working for requests about this customer: the whole acme account pauses.
    blocked = by_account["acme"][0].customer.email
    sandbox.admin("POST", "faults", json={"status": 401, "email": blocked})

    def acme_requests() -> list[dict[str, Any]]:
        return [r for r in requests_log(sandbox) if r["account"] == "acme"]

    publish(by_account["acme"][:1])
    wait_until(lambda: metric_value(worker, "returnsync_klaviyo_auth_failed", 'tenant="acme"') == 1.0,
               within=60, what="acme's auth failure to show")

    # The other accounts' records come in later batches than the one acme paused in: they are
    # delivered all the same, while acme waits.
    publish(by_account["default"] + by_account["globex"])
    for account in ("default", "globex"):
        expected = expected_klaviyo(by_account[account]).profiles
        wait_until(lambda a=account, e=expected: account_profiles(sandbox, a) == e, within=90,
                   what=f"account {account} to hold exactly its tenant's profiles")
    assert metric_value(worker, "returnsync_klaviyo_auth_failed", 'tenant="globex"') == 0.0
    assert metric_value(worker, "returnsync_klaviyo_auth_failed", 'tenant="default"') == 0.0

    # The rest of acme's backlog arrives while paused: it waits, it is neither sent nor dropped.
    publish(by_account["acme"][1:])
    wait_until(lambda: (metric_value(worker, "returnsync_sync_backlog", "") or 0) > 1, within=30,
               what="acme's backlog to reach the worker")
    seen = len(acme_requests())
    wait_until(lambda: len(acme_requests()) >= seen + 2, within=30, what="acme to be probed")
    # Every acme record was published after the pause began, so nothing but 401s reached acme.
    sent = [(r["path"], r["status"]) for r in acme_requests() if r["status"] != 401]
    assert not sent, f"acme requests went out while paused: {sent}"
    assert metric_value(worker, "returnsync_klaviyo_auth_failed", 'tenant="acme"') == 1.0
    assert not account_profiles(sandbox, "acme")

    sandbox.admin("DELETE", "faults")
    acme = expected_klaviyo(by_account["acme"]).profiles
    wait_until(lambda: account_profiles(sandbox, "acme") == acme, within=90, what="acme to catch up")
    wait_until(lambda: metric_value(worker, "returnsync_klaviyo_auth_failed", 'tenant="acme"') == 0.0,
               within=30, what="acme's auth failure to clear")
    for account, events in by_account.items():
        wanted = {(email, uid) for email, _, uid, _ in expected_klaviyo(events).events}

        def timeline(a: str = account) -> set[tuple[str, str]]:
            found = sandbox.admin("GET", "events", params={"account": a})
            return {(e["email"], e["unique_id"]) for e in found}

        assert wait_until(lambda t=timeline, w=wanted: t() == w, within=60, what=f"{account}'s timeline")
    assert {r["account"] for r in requests_log(sandbox)} == set(KEYS.values())
    log = worker.log_file.read_text()  # type: ignore[attr-defined]
    assert "pk_acme_0123" not in log and "pk_globex_4567" not in log, "keys never reach the log"
