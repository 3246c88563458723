"""The worker's processors without a broker: a dict for each table, lists for what they send.

The Faust agents are only loops around these; what the loops add (progress, the catch-all dead
letter) is covered by the integration tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from agents.deadletters import DeadLetters
from agents.worker.fold import Fold
from agents.worker.normalize import Hold, Normalizer
from streams.codec import decode_event, decode_state, encode_event
from streams.demo import demo_events
from streams.outbox import decode_sync_record
from streams.partitioning import expected_partition
from streams.raw import RawWebhook, encode_raw
from streams.reducer import Applied
from tests.streams.adapter_support import raw_fixture

PARTITIONS = 6
JOIN_TOPIC = "rs-returns.raw-shopify_order-repartition"


@dataclass
class Message:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    timestamp: float | None = 1_800_000_000.0  # 2027-01-15: after every demo event


class Outputs:
    """Every async output of a processor, recorded in order."""

    def __init__(self) -> None:
        names = ("sync", "rekey", "emit", "rejoin", "dead")
        self.sent: dict[str, list[tuple[Any, ...]]] = {name: [] for name in names}
        self.dead_letters = DeadLetters(self.record("dead"))

    def record(self, name: str) -> Any:
        async def send(*args: Any) -> None:
            self.sent[name].append(args)

        return send

    def dead(self) -> list[dict[str, Any]]:
        return [orjson.loads(record) for _key, record in self.sent["dead"]]


def fold_with(table: dict[bytes, bytes], outputs: Outputs) -> Fold:
    return Fold(table, PARTITIONS, sync=outputs.record("sync"), rekey=outputs.record("rekey"),
                dead_letters=outputs.dead_letters)


def keyed(event: Any, offset: int = 0) -> Message:
    key = event.customer_key.encode()
    return Message("returns.events", expected_partition(key, PARTITIONS), offset, key, encode_event(event))


async def test_fold_stores_the_state_and_hands_on_one_sync_record_per_event() -> None:
    generated = demo_events(3, seed=4)
    events = [event for event in generated if event.customer_key == generated[0].customer_key]
    table: dict[bytes, bytes] = {}
    outputs = Outputs()
    fold = fold_with(table, outputs)
    for offset, event in enumerate(events):
        await fold.process(keyed(event, offset))
    key = events[0].customer_key.encode()
    state = decode_state(table[key])
    assert state is not None and state.customer_key == events[0].customer_key
    assert len(outputs.sent["sync"]) == len(events)
    sync_key, record, partition = outputs.sent["sync"][-1]
    assert (sync_key, partition) == (key, expected_partition(key, PARTITIONS))
    assert decode_sync_record(record).event.event_id == events[-1].event_id
    assert outputs.sent["rekey"] == [] and outputs.sent["dead"] == []


async def test_fold_applies_a_redelivered_event_once_and_still_resends_its_record() -> None:
    event = demo_events(1, seed=5)[0]
    table: dict[bytes, bytes] = {}
    outputs = Outputs()
    fold = fold_with(table, outputs)
    await fold.process(keyed(event, 0))
    stored = dict(table)
    await fold.process(keyed(event, 1))
    assert table == stored
    assert [decode_sync_record(record).applied for _k, record, _p in outputs.sent["sync"]] == [
        Applied.APPLIED, Applied.DUPLICATE]


async def test_fold_rekeys_an_event_under_the_wrong_key_or_partition_without_touching_state() -> None:
    event = demo_events(1, seed=6)[0]
    key = event.customer_key.encode()
    wrong = (expected_partition(key, PARTITIONS) + 1) % PARTITIONS
    table: dict[bytes, bytes] = {}
    outputs = Outputs()
    fold = fold_with(table, outputs)
    await fold.process(Message("returns.events", wrong, 0, key, encode_event(event)))
    right = expected_partition(key, PARTITIONS)
    await fold.process(Message("returns.events", right, 1, b"other", encode_event(event)))
    assert table == {} and outputs.sent["sync"] == []
    assert outputs.sent["rekey"] == [(key, encode_event(event))] * 2


async def test_fold_dead_letters_what_it_cannot_read_with_where_it_came_from() -> None:
    table: dict[bytes, bytes] = {}
    outputs = Outputs()
    await fold_with(table, outputs).process(Message("returns.events", 2, 41, b"k", b"{not json"))
    [letter] = outputs.dead()
    assert (letter["stage"], letter["original"]) == ("state", "{not json")
    assert letter["origin"] == {"topic": "returns.events", "partition": 2, "offset": 41, "key": "k"}
    assert table == {} and outputs.sent["sync"] == []


def normalizer_with(customers: dict[bytes, bytes], held: dict[bytes, bytes], outputs: Outputs) -> Normalizer:
    return Normalizer(customers=customers, hold=Hold(held, per_order=5, total=50), partitions=PARTITIONS,
                      join_topic=JOIN_TOPIC, emit=outputs.record("emit"), rejoin=outputs.record("rejoin"),
                      dead_letters=outputs.dead_letters)


def envelope(source: str, name: str, **headers: str) -> bytes:
    return encode_raw(raw_fixture(source, name, **headers))


async def test_a_platform_webhook_becomes_canonical_events_keyed_by_customer() -> None:
    outputs = Outputs()
    message = Message("returns.raw", 0, 0, b"loop:1", envelope("loop", "return_created"))
    await normalizer_with({}, {}, outputs).process(message)
    assert outputs.sent["emit"]
    for key, value in outputs.sent["emit"]:
        assert decode_event(value).customer_key.encode() == key


async def delivered_in_turn(normalizer: Normalizer, outputs: Outputs, message: Message) -> None:
    """As Kafka would: a record re-keyed for the join comes back on the join topic, in its partition."""
    await normalizer.process(message)
    while outputs.sent["rejoin"]:
        key, value = outputs.sent["rejoin"].pop(0)
        await normalizer.process(Message(JOIN_TOPIC, expected_partition(key, PARTITIONS), 0, key, value))


async def test_a_shopify_return_before_its_order_is_held_then_released_to_the_orders_customer() -> None:
    customers: dict[bytes, bytes] = {}
    held: dict[bytes, bytes] = {}
    outputs = Outputs()
    normalizer = normalizer_with(customers, held, outputs)
    request = envelope("shopify", "returns_request")
    await delivered_in_turn(normalizer, outputs, Message("returns.raw", 0, 0, None, request))
    assert outputs.sent["emit"] == [] and len(held) == 1, "held under its order, sent nowhere"
    order = Message("returns.raw", 1, 0, None, envelope("shopify", "orders_create"))
    await delivered_in_turn(normalizer, outputs, order)
    assert held == {} and len(customers) == 1
    emitted = [decode_event(value) for _key, value in outputs.sent["emit"]]
    assert emitted and {event.customer.email for event in emitted} == {
        orjson.loads(raw_fixture("shopify", "orders_create").body)["email"].lower()}
    assert outputs.sent["dead"] == []


async def test_returns_of_an_order_without_an_email_are_dead_lettered_not_guessed() -> None:
    order = orjson.loads(raw_fixture("shopify", "orders_create").body)
    order.pop("email", None)
    order.pop("customer", None)
    order.pop("contact_email", None)
    fixture = raw_fixture("shopify", "orders_create")
    anonymous = encode_raw(RawWebhook("shopify", fixture.received_at, fixture.headers, orjson.dumps(order)))
    outputs = Outputs()
    normalizer = normalizer_with({}, {}, outputs)
    request = Message("returns.raw", 0, 0, None, envelope("shopify", "returns_request"))
    await delivered_in_turn(normalizer, outputs, request)
    await delivered_in_turn(normalizer, outputs, Message("returns.raw", 1, 0, None, anonymous))
    [letter] = outputs.dead()
    assert (letter["stage"], letter["reason"]) == ("normalize", "missing_field")
    assert "has no customer email" in letter["error"]
    assert outputs.sent["emit"] == []


async def test_orders_create_is_placed_from_the_join_topic_and_joins_as_before() -> None:
    customers: dict[bytes, bytes] = {}
    outputs = Outputs()
    normalizer = normalizer_with(customers, {}, outputs)
    order = Message("returns.raw", 1, 0, None, envelope("shopify", "orders_create"))
    await normalizer.process(order)
    assert outputs.sent["emit"] == [] and len(outputs.sent["rejoin"]) == 1, "re-keyed first"
    await delivered_in_turn(normalizer, outputs, order)  # Shopify re-sent it: the same order again
    assert len(outputs.sent["emit"]) == 2 and len(customers) == 1
    (key, value), (_, again) = outputs.sent["emit"]
    placed = decode_event(value)
    assert (placed.type.value, placed.event_id, placed.order_ref) == (
        "order.placed", "shopify:order:5196695273621", "#1106")
    assert key == placed.customer_key.encode()
    assert again == value, "one id, which the reducer counts once"
    await delivered_in_turn(normalizer, outputs, Message("returns.raw", 1, 1, None,
                                                         envelope("shopify", "orders_updated")))
    assert len(outputs.sent["emit"]) == 2, "orders/updated places nothing"
    assert outputs.sent["dead"] == []


async def test_fold_counts_a_redelivered_order_once_and_its_sync_records_carry_no_timeline_event() -> None:
    table: dict[bytes, bytes] = {}
    outputs = Outputs()
    fold = fold_with(table, outputs)
    customer = {"email": "olivia.martin@example.com"}
    order = {"event_id": "api:order:1", "type": "order.placed", "occurred_at": "2026-01-02T10:00:00Z",
             "customer": customer, "order_ref": "#1", "amount": "40.00", "currency": "USD", "item_count": 2}
    resent = {**order, "event_id": "api:order:1-retry"}
    for offset, obj in enumerate((order, order, resent)):
        await fold.process(keyed(decode_event(orjson.dumps(obj)), offset))
    records = [decode_sync_record(record) for _key, record, _partition in outputs.sent["sync"]]
    assert [record.applied for record in records] == [Applied.APPLIED, Applied.DUPLICATE, Applied.DUPLICATE]
    (state,) = (decode_state(value) for value in table.values())
    assert state is not None and (state.order_count, state.ordered_item_count, state.version) == (1, 2, 1)
    assert state.return_count == 0 and not state.returns
