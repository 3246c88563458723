"""The HTTP edge where outside data enters (SPEC §6): platform webhooks and canonical events.

`POST /webhooks/{loop,redo,swap,shopify,aftership}`, checked in this order:

- unknown source: 404.
- Content-Length over `webhook_max_bytes` (1 MiB): 413 before reading; a body without a length
  is read up to the limit plus one byte, never further, and refused 413 the same way.
- No secret configured for the source: 403, unless the local dev stack runs (RETURNSYNC_DEV=1),
  which accepts unsigned deliveries (a configured secret is still checked).
- signature (`streams.signatures.verify`, on the bytes exactly as read): 401 when it fails.
- A 403 or 401 delivery whose headers and JSON body are usable is also kept in the dead-letter
  topic (stage `webhook`, with `streams.signatures.proof`: HMAC headers, a digest of a bearer
  token), unless RETURNSYNC_KEEP_REFUSED_WEBHOOKS=false. A platform gives up after its retries;
  once the secret is fixed, `returnsync deadletters redrive` verifies and re-drives what it sent.
- headers over 32 KiB in all: 431 (they are not signed, so a replay could pad them). A kept
  header that is not UTF-8 text, or an `X-Returnsync-Tenant` that breaks the canonical tenant
  rule: 400. Body not JSON (a parse check only; the adapters judge the shape): 400.
- otherwise the `RawWebhook` envelope is appended to `returns.raw`, keyed `<source>:<return id>`
  when the body names one, and the answer is 200 only once the broker acknowledged it (acks=all);
  503 with Retry-After when it does not within `webhook_ack_timeout`, so the platform retries.

Only the headers an adapter or an operator can use are kept in the envelope (content-type,
user-agent, the tenant and the platforms' own `x-shopify-*`-style headers), never cookies or
proxy headers; `RawWebhook` strips the signature headers among them.

`POST /events` takes one canonical event or a list. All or nothing: if any item is invalid the
answer is 400 listing every rejected item by index with its dead-letter reason (among them what
Klaviyo would refuse for good: an email it does not accept, a time before 2000 or more than
RETURNSYNC_MAX_FUTURE_SKEW after the request), and nothing is published, so a producer knows exactly
what to fix and resends the batch (event ids make the resend idempotent). Valid batches go to
`returns.events` keyed by customer key, re-encoded in the canonical wire form: 202 with their event
ids after the broker acknowledged every one; 413 and 503 as for webhooks (same body limit). It needs
`Authorization: Bearer <RETURNSYNC_EVENTS_API_TOKEN>`; with no token configured it is refused (403)
outside the dev stack, like an unsigned source.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from faust.web import View

from agents import metrics
from agents.deadletters import DeadLetters
from agents.settings import SOURCES_WITH_SECRETS, Settings
from agents.worker.runtime import Runtime
from streams.adapters.common import TENANT_HEADER
from streams.codec import encode_event
from streams.errors import Reason, RejectedInput, Stage
from streams.events import DEFAULT_MAX_FUTURE_SKEW, ReturnEvent, check_time, event_from_dict
from streams.events import TENANT_PATTERN as TENANT_RULE
from streams.raw import RawWebhook, encode_raw, raw_key
from streams.signatures import proof, verify

log = logging.getLogger(__name__)

API_SOURCE = "api"
"""The `source` label of POST /events in the webhook metrics."""
_KEPT_HEADERS = frozenset({"content-type", "user-agent", TENANT_HEADER})
_KEPT_PREFIXES = ("x-shopify-", "x-loop-", "x-redo-", "x-swap-", "x-aftership-", "as-", "am-")
_CHUNK = 64 * 1024
MAX_HEADER_BYTES = 32 * 1024
"""Headers are not signed: bound what a replayed delivery can add to the stored envelope."""


class Refused(Exception):
    """A request answered with a 4xx: the status, the metric's `result` label, what to tell the
    sender, and for POST /events every rejected item."""

    def __init__(self, status: int, result: str, message: str, rejected: list[Any] | None = None) -> None:
        super().__init__(message)
        self.status, self.result, self.message, self.rejected = status, result, message, rejected


async def read_body(request: Any, limit: int) -> bytes:
    """The raw body, refusing more than `limit` bytes without ever holding more than limit + 1."""
    declared = request.content_length
    if declared is not None and declared > limit:
        raise Refused(413, "too_large", f"body of {declared} bytes is over the {limit} byte limit")
    chunks: list[bytes] = []
    size = 0
    while chunk := await request.content.read(min(_CHUNK, limit + 1 - size)):
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            raise Refused(413, "too_large", f"body is over the {limit} byte limit")
    return b"".join(chunks)


def kept_headers(headers: Mapping[str, str]) -> dict[str, str]:
    kept = {}
    if sum(len(name) + len(value) for name, value in headers.items()) > MAX_HEADER_BYTES:
        raise Refused(431, "bad_header", f"headers are over the {MAX_HEADER_BYTES} byte limit")
    for name, value in headers.items():
        lower = name.lower()
        if lower in _KEPT_HEADERS or lower.startswith(_KEPT_PREFIXES):
            try:  # aiohttp smuggles non-UTF-8 bytes through as surrogates; a topic cannot hold them
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise Refused(400, "bad_header", f"header {name} is not UTF-8 text") from None
            kept[lower] = value
    tenant = kept.get(TENANT_HEADER)
    if tenant is not None and not TENANT_RULE.match(tenant.strip()):
        raise Refused(400, "bad_tenant", "X-Returnsync-Tenant must be 1-64 of [A-Za-z0-9_.-]")
    return kept


def receive_webhook(
    settings: Settings, source: str, headers: Mapping[str, str], body: bytes
) -> tuple[RawWebhook, str | None]:
    """Authenticate and check one delivery whose body has been read: the envelope and its
    `returns.raw` key. Raises `Refused`."""
    secret = settings.webhook_secrets.get(source)
    if secret is not None and not verify(
        source, headers, body, secret, swap_header=settings.swap_signature_header
    ):
        raise Refused(401, "bad_signature", f"{source} signature does not match the body")
    kept = kept_headers(headers)
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise Refused(400, "not_json", "body is not valid JSON") from None
    received_at = datetime.now(UTC)
    raw = RawWebhook.received(source, kept, body, received_at, strip=(settings.swap_signature_header,))
    return raw, raw_key(source, parsed)


KEPT_REFUSALS = {"no_secret": Reason.NO_SECRET, "bad_signature": Reason.BAD_SIGNATURE}
"""Refusals whose webhook is kept: a configuration fix (the secret) can make them good."""


def refused_delivery(
    settings: Settings, source: str, headers: Mapping[str, str], body: bytes
) -> tuple[bytes | None, bytes] | None:
    """The kept form of a refused delivery, (key, envelope with its signature proof), or None
    when it would be refused anyway (headers or body unusable)."""
    try:
        kept = kept_headers(headers)
        parsed = orjson.loads(body)
    except (Refused, orjson.JSONDecodeError):
        return None
    raw = RawWebhook.received(source, kept, body, datetime.now(UTC), strip=(settings.swap_signature_header,))
    envelope = orjson.loads(encode_raw(raw))
    envelope["proof"] = proof(source, headers, swap_header=settings.swap_signature_header)
    key = raw_key(source, parsed)
    return (key.encode() if key else None), orjson.dumps(envelope)


def parse_events(
    body: bytes, now: datetime, max_future_skew: timedelta = DEFAULT_MAX_FUTURE_SKEW
) -> list[ReturnEvent]:
    """One event or a list; raises `Refused` naming every invalid item (all or nothing).

    `now` is the request time: an event dated more than `max_future_skew` after it is refused."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise Refused(400, "not_json", "body is not valid JSON") from None
    items = payload if isinstance(payload, list) else [payload]
    if not items:
        raise Refused(400, "invalid", "no events in the list")
    events, rejected = [], []
    for index, item in enumerate(items):
        try:
            events.append(check_time(event_from_dict(item), now=now, max_future_skew=max_future_skew))
        except RejectedInput as exc:
            rejected.append({"index": index, "reason": exc.reason.value, "error": exc.detail})
    if rejected:
        raise Refused(400, "invalid", "invalid events: nothing was published", rejected)
    return events


Record = tuple[bytes | None, bytes]


async def acknowledged(
    topic: Any, records: Sequence[Record], within: float,
    hurry: Callable[[], Awaitable[None]] | None = None,
) -> list[Any]:
    """Send, then wait until the broker acknowledged every record (the producer runs acks=all).
    `hurry`: the producer's flush, so these records do not wait out its linger (set for the
    state agent's throughput): the sender is waiting for this answer."""

    async def send_all() -> list[Any]:
        pending = [await topic.send(key=key, value=value) for key, value in records]
        if hurry is not None:
            await hurry()
        # Shielded: a timeout stops our wait, not the sends; a late success is a harmless duplicate.
        return list(await asyncio.gather(*(asyncio.shield(future) for future in pending)))

    return await asyncio.wait_for(send_all(), within)


def register(runtime: Runtime) -> None:
    app, settings = runtime.app, runtime.settings
    events_topic = app.topic(settings.topics.events, key_serializer="raw", value_serializer="raw",
                             partitions=settings.partitions)

    def refused(web: Any, source: str, refusal: Refused) -> Any:
        metrics.WEBHOOKS_RECEIVED.labels(source, refusal.result).inc()
        log.info("request refused source=%s result=%s status=%s", source, refusal.result, refusal.status)
        body: dict[str, Any] = {"error": refusal.message}
        if refusal.rejected is not None:
            body.update(accepted=0, rejected=refusal.rejected)
        return web.json(body, status=refusal.status)

    async def publish(web: Any, source: str, topic: Any, records: Sequence[Record], started: float) -> Any:
        """None once acknowledged; a 503 answer when the broker did not acknowledge in time."""
        try:
            await acknowledged(topic, records, settings.webhook_ack_timeout, app.producer.flush)
        except Exception as exc:  # any broker failure: the sender must retry, we must not 5xx-crash
            metrics.WEBHOOKS_RECEIVED.labels(source, "unavailable").inc()
            log.warning("broker did not acknowledge source=%s error=%s", source, type(exc).__name__)
            return web.json({"error": "not stored: the broker did not acknowledge, retry later"},
                            status=503, headers={"Retry-After": "5"})
        metrics.WEBHOOKS_RECEIVED.labels(source, "accepted").inc()
        metrics.WEBHOOK_ACK_SECONDS.labels(source).observe(time.monotonic() - started)
        return None

    kept = DeadLetters(lambda key, record: acknowledged(
        runtime.deadletter, [(key, record)], settings.webhook_ack_timeout))

    async def keep_refused(source: str, headers: Mapping[str, str], body: bytes, refusal: Refused) -> None:
        """Still refused (the platform is told so and retries); kept unverified in the dead-letter
        topic, never processed until `deadletters redrive` verifies it with the configured secret."""
        record = refused_delivery(settings, source, headers, body)
        if record is None:
            return
        try:
            await kept.write(Stage.WEBHOOK, KEPT_REFUSALS[refusal.result], refusal.message, record[1],
                             key=record[0], origin={"source": source})
        except Exception as exc:  # the answer stays the refusal; the platform's retry keeps it
            log.warning("refused webhook not kept source=%s error=%s", source, type(exc).__name__)

    @app.page("/webhooks/{source}")
    class WebhookView(View):
        async def post(self, request: Any, source: str) -> Any:
            started = time.monotonic()
            if source not in SOURCES_WITH_SECRETS:
                metrics.WEBHOOKS_RECEIVED.labels("unknown", "unknown_source").inc()
                return self.json({"error": f"unknown source; one of {', '.join(SOURCES_WITH_SECRETS)}"},
                                 status=404)
            body = None
            try:
                body = await read_body(request, settings.webhook_max_bytes)
                if source not in settings.webhook_secrets and not settings.dev_stack:
                    raise Refused(403, "no_secret", f"{source} webhooks are refused: "
                                  f"{source.upper()}_WEBHOOK_SECRET is not configured")
                raw, key = receive_webhook(settings, source, request.headers, body)
            except Refused as refusal:
                if body is not None and refusal.result in KEPT_REFUSALS and settings.keep_refused_webhooks:
                    await keep_refused(source, request.headers, body, refusal)
                return refused(self, source, refusal)
            record = (key.encode() if key else None, encode_raw(raw))
            if (failed := await publish(self, source, runtime.raw, [record], started)) is not None:
                return failed
            log.info("webhook stored source=%s key=%s bytes=%d", source, key, len(body))
            return self.json({"status": "accepted", "key": key})

    @app.page("/events")
    class EventsView(View):
        async def post(self, request: Any) -> Any:
            started = time.monotonic()
            try:
                self._authorize(request)
                body = await read_body(request, settings.webhook_max_bytes)
                events = parse_events(body, datetime.now(UTC), settings.max_future_skew)
            except Refused as refusal:
                return refused(self, API_SOURCE, refusal)
            records = [(event.customer_key.encode(), encode_event(event)) for event in events]
            if (failed := await publish(self, API_SOURCE, events_topic, records, started)) is not None:
                return failed
            log.info("events stored count=%d", len(events))
            return self.json({"accepted": len(events), "event_ids": [e.event_id for e in events]},
                             status=202)

        def _authorize(self, request: Any) -> None:
            token = settings.events_api_token
            if token is None:
                if settings.dev_stack:
                    return
                raise Refused(403, "no_secret", "POST /events is refused: "
                              "RETURNSYNC_EVENTS_API_TOKEN is not configured")
            presented = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
            if not hmac.compare_digest(presented.encode("utf-8", "surrogatepass"), token.encode()):
                raise Refused(401, "bad_signature", "Authorization: Bearer <events API token> required")
