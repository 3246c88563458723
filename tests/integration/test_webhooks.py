"""POST /webhooks/{source}, POST /events and `returnsync publish` against a real worker, broker and
sandbox: signed platform webhooks reach Klaviyo as the adapters say, forged ones reach nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from agents.settings import SOURCES_WITH_SECRETS
from streams.events import customer_key, event_from_dict
from streams.raw import SIGNATURE_HEADERS, decode_raw
from streams.signatures import sign
from tests.integration.conftest import WorkerFactory
from tests.integration.harness import expected_klaviyo, profile_differences, wait_until
from tests.integration.webhook_support import (
    EVENTS_TOKEN,
    SECRETS,
    Stack,
    assert_reaches_klaviyo,
    deliver,
    events_of,
    fixture,
    metric,
    read_all,
    running_stack,
    unique_email,
)
from tests.streams.adapter_support import FIXTURES, fixture_names

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def stack(bootstrap_servers: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(bootstrap_servers, tmp_path_factory.mktemp("webhooks"), {}) as running:
        yield running


@pytest.mark.parametrize("source", SOURCES_WITH_SECRETS)
def test_signed_fixture_webhooks_reach_klaviyo(stack: Stack, source: str) -> None:
    # Shopify sends orders/create long before any return of the order.
    names = sorted(fixture_names(source), key=lambda name: name != "orders_create")
    deliveries = [fixture(source, name) for name in names]
    for name, (_, body, headers) in zip(names, deliveries, strict=True):
        response = deliver(stack.url, source, body, headers)
        assert response.status_code == 200, f"{source}/{name}: {response.status_code} {response.text}"

    # Acknowledged means durable: every body is in returns.raw byte for byte, without its signature.
    bodies = Counter(body for _, body, _ in deliveries)
    stored = [decode_raw(record.value) for record in stack.records("returns.raw")]
    mine = [raw for raw in stored if raw.source == source and raw.body in bodies]
    assert Counter(raw.body for raw in mine) == bodies
    assert not any(set(raw.headers) & (SIGNATURE_HEADERS | {"x-swap-signature"}) for raw in mine)
    assert_reaches_klaviyo(stack, deliveries)


def test_forged_webhooks_are_401_and_reach_nothing(stack: Stack) -> None:
    victim = unique_email("forged")
    _, body, headers = fixture("loop", "return_created", {"jane.doe@example.com": victim})
    tampered = body.replace(b'"Jane"', b'"Joan"')
    assert tampered != body
    _, redo_body, _ = fixture("redo", "return_created", {"customer@example.com": victim})
    before = metric(stack.url, "returnsync_webhooks_received_total", source="loop", result="bad_signature")
    attempts = [
        httpx.post(f"{stack.url}/webhooks/loop", content=tampered,
                   headers={**headers, **sign("loop", body, SECRETS["loop"])}),
        deliver(stack.url, "loop", body, headers, secret="not-the-secret"),
        httpx.post(f"{stack.url}/webhooks/loop", content=body, headers=headers),
        deliver(stack.url, "redo", redo_body, secret="not-the-secret"),
    ]
    assert [(r.status_code, "signature" in r.json()["error"]) for r in attempts] == [(401, True)] * 4

    # A genuine webhook after them: once it is in Klaviyo, the forged ones had every chance.
    control = fixture("loop", "return_created", {"jane.doe@example.com": unique_email("control")})
    assert deliver(stack.url, *control).status_code == 200
    assert_reaches_klaviyo(stack, [control])
    assert not events_of(stack.sandbox, {victim}) and victim not in stack.sandbox.profiles()
    stored = stack.records("returns.raw")
    assert not [record for record in stored if victim.encode() in record.value]
    after = metric(stack.url, "returnsync_webhooks_received_total", source="loop", result="bad_signature")
    assert after - before == 3


def test_the_same_webhook_three_times_changes_klaviyo_once(stack: Stack) -> None:
    email = unique_email("thrice")
    complete = fixture("redo", "return_complete", {"customer@example.com": email})
    # An older snapshot of the same return, sent last: same partitions all the way, so once its
    # events are in Klaviyo, the three deliveries before it have been through the whole pipeline.
    barrier = fixture("redo", "return_updated", {"customer@example.com": email})
    for delivery in (complete, complete, complete, barrier):
        assert deliver(stack.url, *delivery).status_code == 200

    assert_reaches_klaviyo(stack, [complete, barrier])
    stored = stack.records("returns.raw")
    assert sum(decode_raw(record.value).body == complete[1] for record in stored) == 3


def test_bodies_up_to_1_mib_are_taken_and_larger_ones_are_413(stack: Stack) -> None:
    def padded(size: int, pad: bytes) -> bytes:
        head, tail = b'{"topic":"return",', b'"pad":""}'
        return head + pad * (size - len(head) - len(tail)) + tail

    def post(body: bytes, *, chunked: bool) -> int:
        content = iter([body[:1000], body[1000:]]) if chunked else body
        headers = sign("loop", body, SECRETS["loop"])
        response = httpx.post(f"{stack.url}/webhooks/loop", content=content, headers=headers, timeout=30)
        return response.status_code

    # Newlines are JSON whitespace that escaping doubles: the largest envelope a 1 MiB body makes.
    at_limit, escaped = padded(MIB, b" "), padded(MIB, b"\n")
    assert (len(at_limit), len(escaped)) == (MIB, MIB)
    assert [post(at_limit, chunked=False), post(escaped, chunked=True)] == [200, 200]
    over = padded(MIB + 1, b" ")
    assert [post(over, chunked=False), post(over, chunked=True)] == [413, 413]

    # Neither body is a Loop return: both reach the dead-letter topic whole, with the reason.
    def letters() -> list:
        found = [orjson.loads(r.value) for r in stack.records("returns.deadletter")]
        return [letter for letter in found if len(letter["original"]) > MIB]

    found = wait_until(lambda: len(letters()) == 2 and letters(), within=30, what="two 1 MiB dead letters")
    assert {decode_raw(letter["original"].encode()).body for letter in found} == {at_limit, escaped}
    assert {(letter["stage"], letter["reason"]) for letter in found} == {("normalize", "missing_field")}
    assert httpx.get(f"{stack.url}/health").status_code == 200


def test_sources_without_a_secret_are_refused_outside_the_dev_stack(
    start_worker: WorkerFactory, bootstrap_servers: str, prefix: str
) -> None:
    worker = start_worker(env={"RETURNSYNC_DEV": "0", "LOOP_WEBHOOK_SECRET": SECRETS["loop"]})
    url = worker.web_url  # type: ignore[attr-defined]
    _, redo_body, _ = fixture("redo", "return_created")
    refused = [
        deliver(url, "redo", redo_body),
        httpx.post(f"{url}/webhooks/shopify", content=b"{}"),
        httpx.post(f"{url}/events", json={}),
    ]
    assert [r.status_code for r in refused] == [403, 403, 403]
    assert "REDO_WEBHOOK_SECRET is not configured" in refused[0].json()["error"]
    assert "RETURNSYNC_EVENTS_API_TOKEN is not configured" in refused[2].json()["error"]
    _, loop_body, headers = fixture("loop", "return_created")
    assert deliver(url, "loop", loop_body, headers).status_code == 200
    stored = read_all(bootstrap_servers, prefix + "returns.raw")
    assert [decode_raw(record.value).body for record in stored] == [loop_body]


def canonical_lines(email: str) -> list[dict]:
    path = FIXTURES / "canonical" / "refund_single_return.jsonl"
    lines = [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
    return [{**line, "customer": {**line["customer"], "email": email}} for line in lines]


def test_events_endpoint_takes_valid_batches_and_refuses_invalid_ones_whole(stack: Stack) -> None:
    email, bystander = unique_email("api"), unique_email("bystander")
    lines = canonical_lines(email)
    auth = {"Authorization": f"Bearer {EVENTS_TOKEN}"}
    mixed = [lines[0], {"type": "return.requested"}, canonical_lines(bystander)[0],
             {**lines[1], "customer": {"email": "not-an-email"}}]

    refused = httpx.post(f"{stack.url}/events", json=mixed, headers=auth)
    assert refused.status_code == 400
    assert refused.json()["accepted"] == 0
    assert [(item["index"], item["reason"]) for item in refused.json()["rejected"]] == [
        (1, "missing_field"), (3, "invalid_field")]
    unauthorised = [httpx.post(f"{stack.url}/events", json=lines),
                    httpx.post(f"{stack.url}/events", json=lines, headers={"Authorization": "Bearer nope"})]
    assert [r.status_code for r in unauthorised] == [401, 401]

    accepted = httpx.post(f"{stack.url}/events", json=lines, headers=auth)
    assert accepted.status_code == 202 and accepted.json()["accepted"] == len(lines)
    single = httpx.post(f"{stack.url}/events", json=lines[0], headers=auth)
    assert single.status_code == 202 and single.json() == {"accepted": 1, "event_ids": [lines[0]["event_id"]]}

    expected = expected_klaviyo([event_from_dict(line) for line in lines])
    wait_until(lambda: events_of(stack.sandbox, {email}) >= expected.events, within=60, what="API events")
    assert wait_until(lambda: not profile_differences(expected, stack.sandbox), within=30,
                      what="the API customer's profile") is True
    stored = stack.records("returns.events")
    keys = Counter(record.key for record in stored)
    assert keys[customer_key("default", email).encode()] == len(lines) + 1
    assert keys[customer_key("default", bystander).encode()] == 0, "nothing of a refused batch"


def publish_cli(stack: Stack, path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": stack.bootstrap_servers,
           "RETURNSYNC_TOPIC_PREFIX": stack.prefix}
    return subprocess.run([sys.executable, "-m", "agents.commands.cli", "publish", str(path), *args],
                          env=env, capture_output=True, text=True, timeout=60, check=False)


def test_publish_puts_platform_payloads_on_returns_raw_as_webhooks(stack: Stack, tmp_path: Path) -> None:
    email = unique_email("backfill")
    names = ("return_created", "return_updated_in_transit", "return_closed")
    lines = [orjson.dumps(orjson.loads(fixture("loop", name, {"jane.doe@example.com": email})[1]))
             for name in names]
    path = tmp_path / "loop.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n\n")

    done = publish_cli(stack, path, "--source", "loop")
    assert done.returncode == 0, done.stderr
    stored = [r for r in stack.records("returns.raw") if email.encode() in r.value]
    envelopes = [decode_raw(record.value) for record in stored]
    assert sorted(raw.body for raw in envelopes) == sorted(lines)
    assert {(record.key, raw.source) for record, raw in zip(stored, envelopes, strict=True)} == {
        (b"loop:6042537", "loop")}
    assert_reaches_klaviyo(stack, [("loop", line, {}) for line in lines])

    shopify = publish_cli(stack, path, "--source", "shopify")
    assert shopify.returncode == 2 and "X-Shopify-Topic" in shopify.stderr
    path.write_bytes(lines[0] + b"\n[1, 2]\n{not json\n")
    bad = publish_cli(stack, path, "--source", "loop")
    assert bad.returncode == 1 and ":2: not_an_object" in bad.stderr and ":3: not_json" in bad.stderr
    again = [r for r in stack.records("returns.raw") if email.encode() in r.value]
    assert len(again) == len(stored), "a file with bad lines publishes nothing"
