"""The pure parts of webhook ingestion: capped body reads, header hygiene, authentication, the
/events batch rule, waiting for acknowledgements, and the bounded Shopify hold."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from agents.settings import Settings
from agents.worker.normalize import HELD_BYTES_PER_ORDER, Hold, decode_customer, encode_customer, join_key
from agents.worker.webhooks import (
    Refused,
    acknowledged,
    kept_headers,
    parse_events,
    read_body,
    receive_webhook,
    refused_delivery,
)
from streams.adapters import normalize
from streams.events import Customer
from streams.signatures import sign
from tests.streams.adapter_support import fixture_body, fixture_headers, raw

NOW = datetime(2025, 1, 1, 1, tzinfo=UTC)
"""When POST /events received a request, in these tests."""

LIMIT = 1000


@dataclass
class Reader:
    data: bytes
    read_so_far: int = 0

    async def read(self, n: int) -> bytes:
        chunk = self.data[self.read_so_far : self.read_so_far + min(n, 7)]
        self.read_so_far += len(chunk)
        return chunk


@dataclass
class FakeRequest:
    data: bytes
    content_length: int | None = None
    content: Reader = field(init=False)

    def __post_init__(self) -> None:
        self.content = Reader(self.data)


@pytest.mark.parametrize("declared", [True, False])
def test_read_body_takes_up_to_the_limit_and_never_reads_past_one_byte_over(declared: bool) -> None:
    exact = FakeRequest(b"x" * LIMIT, LIMIT if declared else None)
    assert asyncio.run(read_body(exact, LIMIT)) == b"x" * LIMIT
    huge = FakeRequest(b"x" * 100 * LIMIT, None)
    with pytest.raises(Refused) as refused:
        asyncio.run(read_body(huge, LIMIT))
    assert (refused.value.status, refused.value.result) == (413, "too_large")
    assert huge.content.read_so_far == LIMIT + 1


def test_a_declared_length_over_the_limit_is_refused_before_reading() -> None:
    request = FakeRequest(b"x" * 2 * LIMIT, 2 * LIMIT)
    with pytest.raises(Refused):
        asyncio.run(read_body(request, LIMIT))
    assert request.content.read_so_far == 0


def test_only_useful_headers_are_kept_and_they_must_be_text() -> None:
    useful = {"X-Shopify-Topic": "returns/approve", "Content-Type": "application/json",
              "X-Returnsync-Tenant": "acme"}
    headers = {**useful, "Cookie": "session=1", "Host": "x", "X-Forwarded-For": "1.2.3.4"}
    assert kept_headers(headers) == {name.lower(): value for name, value in useful.items()}
    with pytest.raises(Refused) as bad:
        kept_headers({"X-Shopify-Topic": b"\xff".decode("utf-8", "surrogateescape")})
    assert (bad.value.status, bad.value.result) == (400, "bad_header")
    with pytest.raises(Refused) as tenant:
        kept_headers({"X-Returnsync-Tenant": "not a tenant!"})
    assert tenant.value.result == "bad_tenant"
    with pytest.raises(Refused) as big:
        kept_headers({f"X-Junk-{n}": "v" * 1000 for n in range(40)})
    assert big.value.status == 431


def test_receive_webhook_verifies_strips_secrets_and_keys_by_return() -> None:
    settings = Settings(webhook_secrets={"loop": "s3cret", "swap": "sw"}, swap_signature_header="X-Swap-Sig")
    body = fixture_body("loop", "return_created")
    webhook, key = receive_webhook(settings, "loop", {**sign("loop", body, "s3cret"), "X-Loop-Id": "1"}, body)
    assert (webhook.body, key, dict(webhook.headers)) == (body, "loop:6042537", {"x-loop-id": "1"})
    with pytest.raises(Refused) as forged:
        receive_webhook(settings, "loop", sign("loop", body, "guess"), body)
    assert (forged.value.status, forged.value.result) == (401, "bad_signature")
    swap, _ = receive_webhook(settings, "swap", sign("swap", b"{}", "sw", swap_header="X-Swap-Sig"), b"{}")
    assert not swap.headers, "the configured Swap signature header is never stored"
    unsigned, _ = receive_webhook(settings, "redo", {}, b"[1]")  # no secret: only reachable in dev
    assert unsigned.body == b"[1]"
    with pytest.raises(Refused) as not_json:
        receive_webhook(settings, "redo", {}, b"{nope")
    assert (not_json.value.status, not_json.value.result) == (400, "not_json")


def test_a_refused_delivery_is_kept_with_its_proof_and_never_a_secret() -> None:
    settings = Settings(webhook_secrets={}, swap_signature_header="X-Swap-Sig")
    body = fixture_body("redo", "return_created")
    headers = {"Authorization": "Bearer redo-s3cret", "X-Redo-Topic": "t"}
    kept = refused_delivery(settings, "redo", headers, body)
    assert kept is not None
    key, value = kept
    envelope = orjson.loads(value)
    assert key is not None and key.startswith(b"redo:")
    assert envelope["headers"] == {"x-redo-topic": "t"} and envelope["body"].encode() == body
    assert envelope["proof"]["authorization"].startswith("sha256:") and b"redo-s3cret" not in value
    swap = refused_delivery(settings, "swap", sign("swap", b"{}", "sw", swap_header="X-Swap-Sig"), b"{}")
    assert swap is not None and set(orjson.loads(swap[1])["proof"]) == {"x-swap-sig"}
    assert not orjson.loads(swap[1])["headers"], "the signature is in the proof only"
    assert refused_delivery(settings, "loop", {}, b"{nope") is None, "what is refused anyway is not kept"
    assert refused_delivery(settings, "loop", {"X-Loop-Topic": "x" * 40_000}, b"{}") is None


def test_parse_events_is_all_or_nothing_and_names_every_rejected_item() -> None:
    event = {"event_id": "e1", "type": "refund.issued", "occurred_at": "2025-01-01T00:00:00Z",
             "customer": {"email": "A@B.co"}, "amount": "5.00"}
    assert [e.event_id for e in parse_events(orjson.dumps(event), NOW)] == ["e1"]
    assert len(parse_events(orjson.dumps([event, {**event, "event_id": "e2"}]), NOW)) == 2
    with pytest.raises(Refused) as refused:
        parse_events(orjson.dumps([event, {"type": "x"}, event, {**event, "amount": "-1"}]), NOW)
    assert [(item["index"], item["reason"]) for item in refused.value.rejected or []] == [
        (1, "missing_field"), (3, "invalid_field")]
    for body in (b"[]", b"nope"):
        with pytest.raises(Refused):
            parse_events(body, NOW)


def test_parse_events_refuses_what_klaviyo_would_refuse_for_good() -> None:
    event = {"event_id": "e1", "type": "return.requested", "return_id": "R1",
             "occurred_at": "2025-01-01T00:00:00Z", "customer": {"email": "a@b.co"}}
    bad = [
        {**event, "customer": {"email": "jösé@exämple.com"}},
        {**event, "occurred_at": "9999-12-31T00:00:00Z"},
        {**event, "occurred_at": "1999-12-31T23:59:59Z"},
        {**event, "occurred_at": "2025-01-01T02:00:01Z"},  # NOW + 1 h + 1 s
    ]
    with pytest.raises(Refused) as refused:
        parse_events(orjson.dumps([event, *bad]), NOW, timedelta(hours=1))
    assert refused.value.status == 400
    assert [(item["index"], item["reason"]) for item in refused.value.rejected or []] == [
        (1, "invalid_field"), (2, "future_time"), (3, "time_out_of_range"), (4, "future_time")]
    assert "ASCII" in (refused.value.rejected or [])[0]["error"]
    assert [e.event_id for e in parse_events(orjson.dumps({**event, "occurred_at": "2025-01-01T02:00:00Z"}),
                                             NOW, timedelta(hours=1))] == ["e1"], "the skew itself is fine"


class FakeTopic:
    def __init__(self, resolves: bool) -> None:
        self.resolves, self.sent = resolves, 0

    async def send(self, *, key: bytes | None, value: bytes) -> asyncio.Future[Any]:
        self.sent += 1
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.resolves:
            future.set_result(("metadata", key))
        return future


def test_acknowledged_waits_for_every_record_and_gives_up_after_the_timeout() -> None:
    assert asyncio.run(acknowledged(FakeTopic(True), [(b"k", b"v"), (None, b"w")], 1.0)) == [
        ("metadata", b"k"), ("metadata", None)]
    never = FakeTopic(False)
    with pytest.raises(TimeoutError):
        asyncio.run(acknowledged(never, [(b"k", b"v")], 0.05))
    assert never.sent == 1


def test_acknowledged_hurries_the_producer_once_every_record_is_sent() -> None:
    topic, seen = FakeTopic(True), []

    async def hurry() -> None:
        seen.append(topic.sent)

    asyncio.run(acknowledged(topic, [(b"k", b"v"), (None, b"w")], 1.0, hurry))
    assert seen == [2]


def test_hold_is_bounded_per_order_in_total_and_in_bytes_and_releases_oldest_first() -> None:
    table: dict[bytes, bytes] = {}
    hold = Hold(table, per_order=2, total=3)
    assert [hold.park("t/1", f"v{n}".encode(), {"offset": n}) for n in range(2)] == [None, None]
    assert "hold full" in (hold.park("t/1", b"v2", {}) or "")
    assert hold.park("t/2", b"w0", {}) is None
    assert "on this worker" in (hold.park("t/3", b"x0", {}) or "")
    assert [entry["value"] for entry in hold.release("t/1")] == ["v0", "v1"]
    assert (hold.count, hold.release("t/1"), b"t/1" in table) == (1, [], False)
    assert "bytes" in (hold.park("t/4", b"x" * HELD_BYTES_PER_ORDER, {}) or "")
    table[b"t/9"] = orjson.dumps([{"value": "a", "origin": {}}] * 5)
    hold.recount()
    assert hold.count == 6


def test_join_key_and_customer_codec() -> None:
    headers = fixture_headers("shopify", "orders_create")
    order = raw("shopify", fixture_body("shopify", "orders_create"), headers)
    assert join_key(order, normalize(order)) == "default/5196695273621"
    no_email = orjson.loads(order.body)
    for name in ("email", "contact_email"):
        no_email[name] = None
    no_email["customer"] = None
    anonymous = raw("shopify", no_email, headers)
    assert join_key(anonymous, normalize(anonymous)) == "default/5196695273621"
    loop = raw("loop", fixture_body("loop", "return_created"))
    assert join_key(loop, normalize(loop)) is None
    sam = Customer("sam@example.com", "66", "Sam", None)
    assert decode_customer(encode_customer(sam)) == sam and decode_customer(b"null") is None
