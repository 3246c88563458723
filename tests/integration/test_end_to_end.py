"""Canonical events on Kafka reach Klaviyo as the profile properties and timeline the rules say."""

from __future__ import annotations

from collections.abc import Callable

import orjson

from streams.demo import demo_events
from tests.integration.conftest import WorkerFactory
from tests.integration.harness import (
    SandboxThread,
    assert_klaviyo_matches,
    expected_klaviyo,
    read_topic,
)
from tests.streams.strategies import fixture_names, load_fixture


def fixture_events() -> list:
    return [event for name in fixture_names() for event in load_fixture(name)]


def test_refund_exchange_store_credit_and_cancelled_customers_reach_klaviyo(
    start_worker: WorkerFactory, publish: Callable[..., None], sandbox: SandboxThread
) -> None:
    events = fixture_events() + demo_events(25, seed=3)
    expected = expected_klaviyo(events)
    outcomes = {p.get("returns_last_outcome") for p in expected.profiles.values()}
    statuses = {p.get("returns_last_status") for p in expected.profiles.values()}
    assert {"refund", "exchange", "store_credit"} <= outcomes and "cancelled" in statuses

    start_worker()
    publish(events)

    assert_klaviyo_matches(expected, sandbox, within=90)


def test_invalid_events_are_dead_lettered_and_valid_ones_around_them_applied(
    start_worker: WorkerFactory,
    publish: Callable[..., None],
    sandbox: SandboxThread,
    bootstrap_servers: str,
    prefix: str,
) -> None:
    valid = demo_events(6, seed=11)
    bad = [
        (b"k1", b"{not json"),
        (b"k2", b"[1, 2, 3]"),
        (b"k3", orjson.dumps({"event_id": "x1", "type": "return.requested"})),
        (
            b"k4",
            orjson.dumps(
                {
                    "event_id": "x2",
                    "type": "return.teleported",
                    "occurred_at": "2026-01-01T00:00:00Z",
                    "customer": {"email": "a@b.co"},
                    "return_id": "R",
                }
            ),
        ),
        (
            b"k5",
            orjson.dumps(
                {
                    "event_id": "x3",
                    "type": "refund.issued",
                    "occurred_at": "2026-01-01T00:00:00",
                    "customer": {"email": "a@b.co"},
                }
            ),
        ),
        (
            b"k6",
            orjson.dumps(
                {
                    "event_id": "x4",
                    "type": "refund.issued",
                    "occurred_at": "2026-01-01T00:00:00Z",
                    "customer": {"email": "not-an-email"},
                    "amount": "1.00",
                }
            ),
        ),
    ]
    start_worker()
    half = len(valid) // 2
    publish(valid[:half], raw=bad[:3])
    publish(valid[half:], raw=bad[3:])

    records = read_topic(bootstrap_servers, prefix + "returns.deadletter", at_least=len(bad), within=60)
    letters = sorted((orjson.loads(r.value) for r in records), key=lambda letter: letter["original"])
    reasons = {letter["original"]: letter["reason"] for letter in letters}
    assert reasons == {
        "{not json": "not_json",
        "[1, 2, 3]": "not_an_object",
        bad[2][1].decode(): "missing_field",
        bad[3][1].decode(): "unknown_type",
        bad[4][1].decode(): "invalid_field",
        bad[5][1].decode(): "invalid_field",
    }
    assert all(letter["stage"] == "state" and letter["error"] and letter["at"] for letter in letters)

    expected = expected_klaviyo(valid)
    assert_klaviyo_matches(expected, sandbox, within=60)
