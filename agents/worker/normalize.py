"""Normalize (Faust agent "normalize"): returns.raw -> platform adapter -> canonical events on returns.events.

Decode the envelope, call the pure adapter (`streams.adapters.normalize`), hand the events off
keyed by customer key. Anything that cannot become events goes to the dead-letter topic (stage
`normalize`, the adapter's reason, the envelope as received); well-formed webhooks that mean
nothing canonical are counted as skips, unmapped platform statuses as unknown statuses.

What Klaviyo would refuse for good never reaches `returns.events`: the adapters validate each
event like `POST /events` does (an email Klaviyo does not take is `invalid_field`), and an event
dated before 2000 or more than `max_future_skew` after the webhook's `received_at` (the HTTP
edge's time, kept in the envelope, so a replay decides the same) dead-letters the whole webhook
(`time_out_of_range` / `future_time`), none of its events sent.

Shopify join (see `streams.adapters.shopify` for the protocol). `returns/*` and
`refunds/create` do not name the customer; `orders/create` does. `returns.raw` is keyed
`<source>:<return id>` (orders by nothing), so an order and its returns land in unrelated
partitions. Two changelog-backed tables hold the join, both keyed by order key
(`<tenant>/<order id>`): `shopify_order_customers` (order -> customer, or a marker for an order
without an email) and `shopify_held` (order -> webhooks waiting for that order). To make them
co-partitioned with what reads and writes them, every Shopify webhook that takes part in the join
is first re-keyed by its order key through the internal topic
`<app id>-<returns.raw>-shopify_order-repartition` (Faust's naming); the agent reads both
topics, and only touches the tables for a record read from that topic, under its own key, in the
partition Kafka's partitioner puts the key in. So the order, its returns and their state always
meet in one partition of one worker, and survive restarts and rebalances with it.

- `orders/create` is also the order itself: besides teaching the join its customer, it is published
  as `order.placed` (id `shopify:order:<order id>`, so every re-delivery is the same order; the
  reducer counts an order once per `order_ref`). One whose total cannot be read still joins,
  counted as skipped `order_not_counted`.
- order first: its returns find the customer and are normalized at once.
- return first: it is parked under its order key (never sent anywhere); the order's arrival
  re-normalizes every parked webhook, oldest first, then deletes them. `HELD_EVENTS{source}`
  shows how many wait.
- order without an email (POS, drafts): parked returns, and later ones, are dead-lettered
  (`missing_field`): they cannot be attributed to anyone, and guessing would be the wrong profile.
- bounds: at most `shopify_hold_per_order` webhooks (and 768 KiB, one changelog record) per
  order and `shopify_hold_max` per worker; a webhook over a bound is dead-lettered with reason
  `missing_field` and an error saying the hold was full, never dropped. Replay it from the
  dead-letter topic once its order is known.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from datetime import timedelta
from typing import Any

import orjson

from agents import metrics
from agents.deadletters import DeadLetters, origin_of
from agents.settings import SOURCES_WITH_SECRETS
from agents.topic_plan import SHOPIFY_CUSTOMERS_TABLE, SHOPIFY_HELD_TABLE, shopify_join_topic
from agents.worker.runtime import Runtime
from streams.adapters import Normalized, Skip, normalize, shopify
from streams.adapters.common import tenant_of
from streams.adapters.payload import load_object, required_text
from streams.codec import encode_event
from streams.errors import Reason, RejectedInput, Stage
from streams.events import DEFAULT_MAX_FUTURE_SKEW, Customer, check_time
from streams.partitioning import expected_partition
from streams.raw import RawWebhook, decode_raw

log = logging.getLogger(__name__)

HELD_BYTES_PER_ORDER = 768 * 1024
"""One table value is one changelog record; Kafka's default limit is 1 MB a record."""
NO_EMAIL = b"null"
"""`shopify_order_customers` value of an order known to have no customer email."""


def join_key(raw: RawWebhook, result: Normalized) -> str | None:
    """The order key a Shopify webhook joins on, or None when it takes no part in the join."""
    if result.awaiting_order is not None:
        return result.awaiting_order
    if result.order_customer is not None:
        return result.order_customer.order_key
    if result.skipped is Skip.NO_CUSTOMER:  # only orders/* say this: an order without an email
        return shopify.order_key(tenant_of(raw), required_text(load_object(raw.body), "id"))
    return None


def encode_customer(customer: Customer) -> bytes:
    return orjson.dumps({name: getattr(customer, name) for name in Customer.__slots__})


def decode_customer(value: bytes | None) -> Customer | None:
    fields = orjson.loads(value) if value is not None else None
    return Customer(**fields) if fields else None


class Hold:
    """Webhooks parked per order key in a changelog-backed table, bounded per order and in total.

    Values are JSON lists of `{"value": <returns.raw envelope>, "origin": {...}}`, oldest first.
    `count` is this worker's total, recounted from the table on a timer (rebalances move keys).
    """

    def __init__(self, table: Any, per_order: int, total: int) -> None:
        self.table, self.per_order, self.total, self.count = table, per_order, total, 0

    def park(self, key: str, value: bytes, origin: dict[str, Any]) -> str | None:
        """None once parked; otherwise why it could not be (the hold is full)."""
        parked = self._entries(key)
        if len(parked) >= self.per_order:
            return f"hold full: {len(parked)} webhooks already wait for shopify order {key}"
        if self.count >= self.total:
            return f"hold full: {self.count} webhooks already wait on this worker"
        stored = orjson.dumps([*parked, {"value": value.decode(), "origin": origin}])
        if len(stored) > HELD_BYTES_PER_ORDER:
            return f"hold full: webhooks waiting for shopify order {key} exceed {HELD_BYTES_PER_ORDER} bytes"
        self.table[key.encode()] = stored
        self._changed(1)
        return None

    def release(self, key: str) -> list[dict[str, Any]]:
        parked = self._entries(key)
        if parked:
            del self.table[key.encode()]
            self._changed(-len(parked))
        return parked

    def recount(self) -> None:
        self.count = sum(len(orjson.loads(value)) for value in self.table.values())
        metrics.HELD_EVENTS.labels(shopify.SOURCE).set(self.count)

    def _entries(self, key: str) -> list[dict[str, Any]]:
        stored = self.table.get(key.encode())
        return list(orjson.loads(stored)) if stored is not None else []

    def _changed(self, delta: int) -> None:
        self.count = max(0, self.count + delta)
        metrics.HELD_EVENTS.labels(shopify.SOURCE).set(self.count)


class Normalizer:
    """One raw webhook into canonical events, Shopify's joined with their order (see above).

    Its inputs are explicit: the two join tables (any mutable mapping), three async outputs and
    the dead-letter writer, so tests drive it with dicts and lists; the Faust agent below is
    only the loop around it. `join_topic` is the re-key topic's name: only a record read from it,
    under its own key, in its key's partition, may touch the tables."""

    def __init__(self, *, customers: MutableMapping[bytes, bytes], hold: Hold, partitions: int,
                 join_topic: str, emit: Callable[[bytes, bytes], Awaitable[Any]],
                 rejoin: Callable[[bytes, bytes], Awaitable[Any]], dead_letters: DeadLetters,
                 max_future_skew: timedelta = DEFAULT_MAX_FUTURE_SKEW) -> None:
        self.customers, self.hold, self.partitions, self.join_topic = customers, hold, partitions, join_topic
        self._emit, self._rejoin, self.dead_letters = emit, rejoin, dead_letters
        self.max_future_skew = max_future_skew

    async def process(self, message: Any) -> None:
        origin = origin_of(message)
        try:
            raw = decode_raw(message.value)
            if raw.source == shopify.SOURCE:
                await self._join_shopify(raw, message, origin)
            else:
                await self._publish(raw, normalize(raw), message.value, origin)
        except RejectedInput as exc:
            await self._dead(exc.reason, exc.detail, message.value, origin)

    async def _join_shopify(self, raw: RawWebhook, message: Any, origin: dict[str, Any]) -> None:
        def owned(key: str) -> bool:
            # Only here are the tables this key's truth: the record was re-keyed to its partition.
            encoded = key.encode()
            return bool(message.topic == self.join_topic and message.key == encoded
                        and message.partition == expected_partition(encoded, self.partitions))

        def lookup(key: str) -> Customer | None:
            return decode_customer(self.customers.get(key.encode())) if owned(key) else None

        result = normalize(raw, lookup)
        key = join_key(raw, result)
        if key is not None and not owned(key):
            await self._rejoin(key.encode(), message.value)
            return
        if result.order_customer is not None:
            order = result.order_customer
            self.customers[order.order_key.encode()] = encode_customer(order.customer)
            for parked in self.hold.release(order.order_key):
                await self._release(parked, lookup)
        elif key is not None and result.skipped is Skip.NO_CUSTOMER:
            self.customers[key.encode()] = NO_EMAIL
            for parked in self.hold.release(key):
                await self._dead(Reason.MISSING_FIELD, _no_email(key), parked["value"].encode(),
                                 parked["origin"])
        elif key is not None and result.awaiting_order is not None:
            if self.customers.get(key.encode()) == NO_EMAIL:
                await self._dead(Reason.MISSING_FIELD, _no_email(key), message.value, origin)
            elif (full := self.hold.park(key, message.value, origin)) is not None:
                await self._dead(Reason.MISSING_FIELD, full, message.value, origin)
            else:
                log.info("shopify webhook held origin=%s until its order arrives", origin)
        await self._publish(raw, result, message.value, origin)

    async def _release(self, parked: dict[str, Any], lookup: Callable[[str], Customer | None]) -> None:
        """A held webhook, normalized again now that its order is known."""
        value = parked["value"].encode()
        try:
            raw = decode_raw(value)
            result = normalize(raw, lookup)
        except RejectedInput as exc:
            await self._dead(exc.reason, exc.detail, value, parked["origin"])
            return
        if result.awaiting_order is not None:  # cannot happen: parked under the order just stored
            await self._dead(Reason.PROCESSING_ERROR, "held webhook still awaits its order", value,
                             parked["origin"])
            return
        await self._publish(raw, result, value, parked["origin"])

    async def _publish(self, raw: RawWebhook, result: Normalized, value: bytes,
                       origin: dict[str, Any]) -> None:
        try:
            for event in result.events:  # all or none: one webhook is one snapshot
                check_time(event, now=raw.received_at, max_future_skew=self.max_future_skew)
        except RejectedInput as exc:
            await self._dead(exc.reason, exc.detail, value, origin)
            return
        source = raw.source
        if result.unknown_status is not None:
            metrics.UNKNOWN_STATUSES.labels(source).inc()
            # The word, for whoever maps it next (a platform enum, never customer data); the
            # webhook itself stays in returns.raw to be re-normalized once it is mapped.
            log.warning("unknown platform status source=%s status=%r: no status change made",
                        source, result.unknown_status[:64])
        if result.skipped is not None:
            metrics.WEBHOOKS_SKIPPED.labels(source, result.skipped.value).inc()
        for event in result.events:
            await self._emit(event.customer_key.encode(), encode_event(event))

    async def _dead(self, reason: Reason, error: str, value: bytes, origin: dict[str, Any]) -> None:
        key = origin.get("key")
        await self.dead_letters.write(Stage.NORMALIZE, reason, error, value,
                                      key=key.encode() if key else None, origin=origin)


def register(runtime: Runtime) -> None:
    app, settings = runtime.app, runtime.settings

    def topic(*names: str, internal: bool = False) -> Any:
        return app.topic(*names, key_serializer="raw", value_serializer="raw",
                         partitions=settings.partitions, internal=internal)

    def table(name: str) -> Any:
        return app.Table(name, default=None, partitions=settings.partitions, key_type=bytes, value_type=bytes)

    for source in SOURCES_WITH_SECRETS:  # series exist from the first scrape, like metrics.preinitialise
        for skip in Skip:
            metrics.WEBHOOKS_SKIPPED.labels(source, skip.value)
    events = topic(settings.topics.events)
    join = topic(shopify_join_topic(settings), internal=True)
    hold = Hold(table(SHOPIFY_HELD_TABLE), settings.shopify_hold_per_order, settings.shopify_hold_max)
    dead_letters = DeadLetters(lambda key, record: runtime.deadletter.send(key=key, value=record))

    async def emit(key: bytes, value: bytes) -> None:
        await events.send(key=key, value=value)

    async def rejoin(key: bytes, value: bytes) -> None:
        await join.send(key=key, value=value)

    normalizer = Normalizer(customers=table(SHOPIFY_CUSTOMERS_TABLE), hold=hold,
                            partitions=settings.partitions, join_topic=shopify_join_topic(settings),
                            emit=emit, rejoin=rejoin, dead_letters=dead_letters,
                            max_future_skew=settings.max_future_skew)

    @app.agent(topic(settings.topics.raw, shopify_join_topic(settings)), name="normalize")
    async def normalize_raw(stream: Any) -> AsyncIterator[None]:
        async for item in stream.events():
            message = item.message
            try:
                await normalizer.process(message)
            except Exception as exc:  # a bug must dead-letter one webhook, not stop the worker
                log.exception("normalize agent failed on offset=%s", message.offset)
                await dead_letters.message(Stage.NORMALIZE, Reason.PROCESSING_ERROR, repr(exc), message)
            runtime.progress.record(message)
            yield None

    @app.timer(interval=10.0)  # type: ignore[untyped-decorator]
    async def recount_held() -> None:
        hold.recount()


def _no_email(key: str) -> str:
    return f"shopify order {key} has no customer email: its returns cannot be attributed to a profile"
