"""What the webhook tests share: one secured worker per module, signed delivery, expectations.

Expectations come from the same pure adapters the worker runs (`streams.adapters.normalize`,
with the Shopify join done on dicts) and then `expected_klaviyo`, so a test compares what Klaviyo
holds with what the rules say one delivery of each webhook should make of it.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition

from agents.devstack.broker import free_port
from agents.devstack.processes import ChildProcess, worker_env
from agents.settings import SOURCES_WITH_SECRETS
from streams.adapters import normalize
from streams.events import Customer, ReturnEvent
from streams.raw import RawWebhook
from streams.signatures import sign
from tests.integration.conftest import PARTITIONS
from tests.integration.harness import (
    SANDBOX_KEY,
    SandboxThread,
    expected_klaviyo,
    profile_differences,
    wait_until,
)
from tests.streams.adapter_support import fixture_body, fixture_headers

SECRETS = {source: f"{source}-whsec-0f3a9c" for source in SOURCES_WITH_SECRETS}
SECRET_ENV = {f"{source.upper()}_WEBHOOK_SECRET": secret for source, secret in SECRETS.items()}
EVENTS_TOKEN = "events-token-5d1e"
Delivery = tuple[str, bytes, dict[str, str]]
"""(source, body, headers) of one webhook as a platform would send it, before signing."""


@dataclass
class Stack:
    url: str
    sandbox: SandboxThread
    prefix: str
    bootstrap_servers: str
    worker: ChildProcess

    def topic(self, name: str) -> str:
        return self.prefix + name

    def records(self, name: str) -> list[Any]:
        """Every record of one of this stack's topics (`returns.raw` ...) so far."""
        return read_all(self.bootstrap_servers, self.prefix + name)


@contextmanager
def running_stack(bootstrap_servers: str, tmp: Path, env: dict[str, str]) -> Iterator[Stack]:
    """A sandbox and one worker (secure by default: RETURNSYNC_DEV=0, every secret set)."""
    sandbox = SandboxThread(rate_limit_scale=0).start()
    prefix, port = f"t{uuid.uuid4().hex[:10]}.", free_port()
    extra = {"RETURNSYNC_TOPIC_PREFIX": prefix, "RETURNSYNC_DEV": "0", **SECRET_ENV,
             "RETURNSYNC_EVENTS_API_TOKEN": EVENTS_TOKEN, **env}
    child_env = worker_env(
        bootstrap_servers=bootstrap_servers, klaviyo_url=sandbox.url, klaviyo_key=SANDBOX_KEY,
        app_id=f"{prefix}returnsync", web_port=port, data_dir=tmp / "worker", partitions=PARTITIONS,
        extra=extra,
    )
    worker = ChildProcess(["worker"], child_env, tmp / "worker.log").start()
    try:
        url = f"http://127.0.0.1:{port}"
        worker.wait_http(f"{url}/ready", within=90)
        yield Stack(url, sandbox, prefix, bootstrap_servers, worker)
    finally:
        worker.stop(within=20)
        sandbox.stop()


def deliver(url: str, source: str, body: bytes, headers: dict[str, str] | None = None,
            *, secret: str | None = None) -> httpx.Response:
    """POST a webhook signed the platform's way (with `secret`, by default the configured one)."""
    signed = sign(source, body, SECRETS[source] if secret is None else secret)
    return httpx.post(f"{url}/webhooks/{source}", content=body, headers={**(headers or {}), **signed},
                      timeout=30)


def fixture(source: str, name: str, replace: dict[str, str] | None = None) -> Delivery:
    """A fixture webhook; `replace` swaps text (case-insensitively) in body and headers, giving a
    test its own customer, order and return ids on the same realistic payload."""
    body = fixture_body(source, name).decode()
    headers = fixture_headers(source, name)
    for old, new in (replace or {}).items():
        body = re.sub(re.escape(old), new, body, flags=re.IGNORECASE)
        headers = {k: re.sub(re.escape(old), new, v, flags=re.IGNORECASE) for k, v in headers.items()}
    return source, body.encode(), headers


def unique_email(label: str) -> str:
    return f"{label}.{uuid.uuid4().hex[:8]}@example.com"


def expected_events(deliveries: list[Delivery]) -> list[ReturnEvent]:
    """What one delivery of each webhook, in this order, yields: the adapters plus the Shopify
    join (a return before its order waits for it, as the worker parks it)."""
    customers: dict[str, Customer] = {}
    parked: dict[str, list[RawWebhook]] = {}
    out: list[ReturnEvent] = []

    def handle(raw: RawWebhook) -> None:
        result = normalize(raw, customers.get)
        if result.order_customer is not None:
            customers[result.order_customer.order_key] = result.order_customer.customer
            for waiting in parked.pop(result.order_customer.order_key, []):
                handle(waiting)
        if result.awaiting_order is not None:
            parked.setdefault(result.awaiting_order, []).append(raw)
        out.extend(result.events)

    for source, body, headers in deliveries:
        handle(RawWebhook.received(source, headers, body, datetime.now(UTC)))
    return out


def events_of(sandbox: SandboxThread, emails: set[str]) -> set[tuple[str, str, str, bool]]:
    return {key for key in sandbox.event_keys() if key[0] in emails}


def metric(url: str, name: str, **labels: str) -> float:
    """One sample of the worker's /metrics (0 when absent)."""
    wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    series = f"{name}{{{wanted}}}" if labels else name
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def read_all(bootstrap_servers: str, topic: str, *, within: float = 30) -> list[Any]:
    """Every record of a topic up to its current end offsets."""

    async def read() -> list[Any]:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, enable_auto_commit=False)
        await consumer.start()
        try:
            deadline = time.monotonic() + within
            partitions = consumer.partitions_for_topic(topic) or set()
            while len(partitions) < PARTITIONS and time.monotonic() < deadline:
                await consumer.topics()
                partitions = consumer.partitions_for_topic(topic) or set()
                await asyncio.sleep(0.1)
            tps = [TopicPartition(topic, p) for p in sorted(partitions)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            ends = await consumer.end_offsets(tps)
            records: list[Any] = []
            while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
                if time.monotonic() > deadline:
                    raise AssertionError(f"could not read {topic} to its end within {within}s")
                for batch in (await consumer.getmany(timeout_ms=200)).values():
                    records.extend(batch)
            return records
        finally:
            await consumer.stop()

    return asyncio.run(read())


def assert_reaches_klaviyo(stack: Stack, deliveries: list[Delivery]) -> None:
    """Klaviyo ends exactly as one delivery of each webhook, in this order, says."""
    expected = expected_klaviyo(expected_events(deliveries))
    emails = set(expected.profiles)
    assert expected.events and emails, "a scenario whose webhooks mean something"
    wait_until(lambda: events_of(stack.sandbox, emails) >= expected.events, within=60,
               what=f"{len(expected.events)} timeline events for {sorted(emails)}")
    try:
        wait_until(lambda: not profile_differences(expected, stack.sandbox), within=30,
                   what="profiles equal to one delivery of each webhook")
    except AssertionError as timeout:
        raise AssertionError(f"{timeout}: {profile_differences(expected, stack.sandbox)}") from None
    assert events_of(stack.sandbox, emails) == expected.events, "no event beyond the expected ones"
