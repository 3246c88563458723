"""No input can poison a customer (issue 10), against a real worker, broker and sandbox.

The three inputs a user found doing lasting harm through `returnsync dev`: an email Klaviyo
refuses, an event dated 9999-12-31, and one event with 20,000 items. The first two are refused
on every path (400 at `POST /events`, a dead letter with the reason from Kafka and from
webhooks) and leave no state; the third is taken, and its customer still syncs every later
change (no 413, no dead letter), while other customers are untouched.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from agents.commands.publish import publish_records
from streams.events import customer_key, event_from_dict
from tests.integration.harness import expected_klaviyo, profile_differences, wait_until
from tests.integration.webhook_support import (
    EVENTS_TOKEN,
    Stack,
    deliver,
    events_of,
    fixture,
    running_stack,
    unique_email,
)
from tests.streams.adapter_support import FIXTURES

AUTH = {"Authorization": f"Bearer {EVENTS_TOKEN}"}
BAD_EMAIL = "jösé@exämple.com"
FAR_FUTURE = "9999-12-31T00:00:00Z"
ITEMS = 20_000


@pytest.fixture(scope="module")
def stack(bootstrap_servers: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(bootstrap_servers, tmp_path_factory.mktemp("poison"), {}) as running:
        yield running


def event(email: str, event_id: str, type_: str = "return.requested", *, return_id: str = "R-1",
          occurred_at: str = "2026-11-02T10:00:00Z", **fields: Any) -> dict[str, Any]:
    return {"event_id": event_id, "type": type_, "return_id": return_id, "occurred_at": occurred_at,
            "customer": {"email": email}, **fields}


def post_events(stack: Stack, body: Any) -> httpx.Response:
    return httpx.post(f"{stack.url}/events", json=body, headers=AUTH, timeout=60)


def bystander_lines(email: str) -> list[dict[str, Any]]:
    path = FIXTURES / "canonical" / "refund_single_return.jsonl"
    lines = [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
    return [{**line, "customer": {**line["customer"], "email": email}} for line in lines]


def test_bad_inputs_are_refused_and_a_huge_return_does_not_stall_its_customer(stack: Stack) -> None:
    big, bystander, future = unique_email("big"), unique_email("bystander"), unique_email("future")
    kafka_future, webhook_future = unique_email("kafka-future"), unique_email("webhook-future")

    # 1. POST /events: the bad ones are 400 with the reason; nothing of them is published.
    refused = [post_events(stack, event(BAD_EMAIL, "bad-email-1")),
               post_events(stack, event(future, "future-1", occurred_at=FAR_FUTURE))]
    assert [r.status_code for r in refused] == [400, 400]
    assert [[item["reason"] for item in r.json()["rejected"]] for r in refused] == [
        ["invalid_field"], ["future_time"]]
    assert "non-ASCII" in refused[0].json()["rejected"][0]["error"]
    assert "9999-12-31" in refused[1].json()["rejected"][0]["error"]

    # The huge return is taken: nothing Klaviyo refuses is in it, only a lot of it.
    huge = event(big, "big-requested", return_id="R-BIG",
                 items=[{"sku": f"S{n}", "quantity": 1} for n in range(ITEMS)])
    assert post_events(stack, huge).status_code == 202
    assert post_events(stack, bystander_lines(bystander)).status_code == 202

    # 2. The same bad inputs straight onto returns.events, and through a platform's webhook.
    kafka_bad = [event(BAD_EMAIL, "bad-email-kafka"),
                 event(kafka_future, "future-kafka", occurred_at=FAR_FUTURE)]
    records = [(customer_key("default", obj["customer"]["email"].lower()).encode(), orjson.dumps(obj))
               for obj in kafka_bad]
    asyncio.run(publish_records(stack.bootstrap_servers, stack.topic("returns.events"), records))
    bad_webhook = fixture("loop", "return_created", {"jane.doe@example.com": BAD_EMAIL, "6042537": "6042001"})
    future_webhook = fixture("loop", "return_created",
                             {"jane.doe@example.com": webhook_future, "2024-03-02": "9999-03-02",
                              "6042537": "6042002"})
    answers = [deliver(stack.url, *bad_webhook), deliver(stack.url, *future_webhook)]
    assert [r.status_code for r in answers] == [200, 200], "the edge stores; normalize judges"

    # 3. A later change of the huge return's customer reaches Klaviyo: the profile is written.
    later = event(big, "big-approved", "return.approved", return_id="R-BIG",
                  occurred_at="2026-11-03T10:00:00Z")
    assert post_events(stack, later).status_code == 202

    def big_profile() -> dict[str, Any] | None:
        profile = stack.sandbox.profiles().get(big)
        properties = (profile or {}).get("properties", {})
        return properties if properties.get("returns_last_status") == "approved" else None

    properties = wait_until(big_profile, within=90, what="the huge return's customer approved in Klaviyo")
    assert properties["returns_active"] is True
    assert 0 < len(properties["returns_active_skus"]) <= 100
    assert properties["returns_items_count"] == ITEMS
    big_events = events_of(stack.sandbox, {big})
    assert "big-approved" in {key[2] for key in big_events}, "its timeline event arrived too"
    assert len([key for key in big_events if key[1] == "Return Requested Item"]) == 50

    # Other customers are unaffected.
    expected = expected_klaviyo([event_from_dict(line) for line in bystander_lines(bystander)])
    wait_until(lambda: events_of(stack.sandbox, {bystander}) >= expected.events, within=60,
               what="the bystander's events")
    assert wait_until(lambda: not profile_differences(expected, stack.sandbox), within=30,
                      what="the bystander's profile") is True

    # Every refusal from Kafka and webhooks is a dead letter with its reason; none at sync.
    def refusals() -> list[tuple[str, str]] | None:
        letters = [orjson.loads(record.value) for record in stack.records("returns.deadletter")]
        found = sorted((letter["stage"], letter["reason"]) for letter in letters)
        return found if len(found) >= 4 else None

    assert wait_until(refusals, within=60, what="four dead letters") == [
        ("normalize", "future_time"), ("normalize", "invalid_field"),
        ("state", "future_time"), ("state", "invalid_field")]

    # Nothing of a refused input reached Klaviyo or state, and Klaviyo refused nothing we sent.
    profiles = stack.sandbox.profiles()
    for email in (BAD_EMAIL, future, kafka_future, webhook_future):
        assert email not in profiles and not events_of(stack.sandbox, {email}), email
    counts = stack.sandbox.admin("GET", "counts")
    assert set(counts["requests"]["by_status"]) <= {"200", "201", "202", "204"}, counts["requests"]
    assert stack.sandbox.admin("GET", "violations") == []
    stored = {record.key for record in stack.records("returns.events")}
    assert customer_key("default", future).encode() not in stored, "POST /events published nothing of it"
