"""The production table store (RocksDB through rocksdict) keeps state across a restart."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from streams.demo import demo_events
from streams.state import state_to_dict
from tests.integration.conftest import WorkerFactory
from tests.integration.harness import SandboxThread, assert_klaviyo_matches, expected_klaviyo


def test_rocksdb_store_serves_state_and_survives_a_restart(
    start_worker: WorkerFactory, publish: Callable[..., None], sandbox: SandboxThread
) -> None:
    events = demo_events(12, seed=8)
    expected = expected_klaviyo(events)
    rocksdb = {"RETURNSYNC_STORE": "rocksdb://"}
    worker = start_worker(env=rocksdb)
    publish(events)
    assert_klaviyo_matches(expected, sandbox, within=90)
    worker.stop()

    restarted = start_worker(env=rocksdb)  # same data directory: state read back from RocksDB
    for state in expected.states.values():
        url = f"{restarted.web_url}/customers/{state.identity.email}"  # type: ignore[attr-defined]
        body = httpx.get(url, timeout=10).json()
        body.pop("store_credit_balance"), body.pop("active_returns")
        assert body == state_to_dict(state), f"state after restart differs for {state.customer_key}"
