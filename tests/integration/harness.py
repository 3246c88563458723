"""What integration tests share: a sandbox on its own thread, waits with deadlines, expectations.

Expectations are computed with the same pure reducer and projection the worker uses, from the
same input, so a test compares what Klaviyo holds with what the rules say it should hold.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TypeVar

import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition

from klaviyo_sandbox import SandboxServer
from streams.events import ReturnEvent
from streams.projection import ProjectionConfig, klaviyo_events, profile_properties
from streams.reducer import Applied, apply_event
from streams.state import CustomerState

SANDBOX_KEY = "sandbox-key"
T = TypeVar("T")


class SandboxThread:
    """The real sandbox HTTP server, on a thread with its own loop, so tests can block freely."""

    def __init__(self, **options: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        # `api_keys` (key -> account) for tests that need more than the one default account.
        self.server = SandboxServer(**{"api_keys": {SANDBOX_KEY: "default"}, **options})
        self.url = ""

    def start(self) -> SandboxThread:
        self.thread.start()
        self.url = asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(30)
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    def admin(self, method: str, path: str, **kwargs: Any) -> Any:
        response = httpx.request(method, f"{self.url}/_sandbox/{path}", timeout=30, **kwargs)
        response.raise_for_status()
        return response.json()["data"] if response.content else None

    def profiles(self) -> dict[str, dict[str, Any]]:
        return {profile["email"]: profile for profile in self.admin("GET", "profiles")}

    def events(self) -> list[dict[str, Any]]:
        return list(self.admin("GET", "events"))

    def event_keys(self) -> set[tuple[str, str, str, bool]]:
        return {(e["email"], e["metric"], e["unique_id"], e["backfill"]) for e in self.events()}


def wait_until(check: Callable[[], T], *, within: float, what: str, every: float = 0.25) -> T:
    """Poll `check` until it returns something truthy; fail with `what` and the last value."""
    deadline = time.monotonic() + within
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {within:.0f}s waiting for {what}; last: {last!r}")


@dataclass
class Expected:
    states: dict[str, CustomerState]
    profiles: dict[str, dict[str, Any]]
    events: set[tuple[str, str, str, bool]]


def expected_klaviyo(
    events: Iterable[ReturnEvent], config: ProjectionConfig | None = None, *, item_lines: bool = False
) -> Expected:
    """Reduce events in the given order, per customer, as the worker would, and project them."""
    config = config or ProjectionConfig()
    states: dict[str, CustomerState] = {}
    timeline: set[tuple[str, str, str, bool]] = set()
    for event in events:
        result = apply_event(states.get(event.customer_key), event, item_lines=item_lines)
        states[event.customer_key] = result.state
        if result.applied in (Applied.DUPLICATE, Applied.REPEATED):
            continue  # nothing new on the timeline
        backfill = event.backfill or result.applied is Applied.OUT_OF_ORDER
        for item in klaviyo_events(event, config, backfill=backfill):
            timeline.add((item.email, item.metric, item.unique_id, item.backfill))
    profiles = {
        state.identity.email: as_klaviyo_json(profile_properties(state, config)) for state in states.values()
    }
    return Expected(states=states, profiles=profiles, events=timeline)


def as_klaviyo_json(properties: dict[str, Any]) -> dict[str, Any]:
    """What Klaviyo stores: nulls cleared (absent), Decimals as JSON numbers."""
    return {
        key: float(value) if isinstance(value, Decimal) else value
        for key, value in properties.items()
        if value is not None
    }


def profile_differences(expected: Expected, sandbox: SandboxThread) -> list[str]:
    actual = sandbox.profiles()
    problems = []
    for email, properties in expected.profiles.items():
        got = actual.get(email, {}).get("properties")
        if got is None:
            problems.append(f"{email}: no profile")
            continue
        wanted_subset = {key: got.get(key) for key in properties}
        if wanted_subset != properties or any(k.startswith("returns_") and k not in properties for k in got):
            problems.append(f"{email}: expected {properties}, got {got}")
    return problems


def assert_klaviyo_matches(expected: Expected, sandbox: SandboxThread, *, within: float) -> None:
    """Wait until the sandbox holds exactly the expected timeline and profile properties."""
    wait_until(
        lambda: sandbox.event_keys() >= expected.events,
        within=within,
        what=f"all {len(expected.events)} timeline events in the sandbox",
    )
    try:
        wait_until(
            lambda: not profile_differences(expected, sandbox),
            within=60,
            what="sandbox profiles equal to the reducer's state",
        )
    except AssertionError as exc:
        raise AssertionError(
            f"{exc}; first differences: {profile_differences(expected, sandbox)[:3]}"
        ) from None
    assert sandbox.event_keys() == expected.events, "no event beyond the expected ones"


def read_topic(bootstrap_servers: str, topic: str, *, at_least: int, within: float) -> list[Any]:
    """Every record of a topic from the beginning, waiting until at least `at_least` arrived."""

    async def read() -> list[Any]:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, enable_auto_commit=False)
        await consumer.start()
        try:
            partitions = consumer.partitions_for_topic(topic) or set()
            deadline = time.monotonic() + within
            while not partitions and time.monotonic() < deadline:
                await consumer.topics()
                partitions = consumer.partitions_for_topic(topic) or set()
                await asyncio.sleep(0.2)
            tps = [TopicPartition(topic, p) for p in sorted(partitions)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            records: list[Any] = []
            while len(records) < at_least and time.monotonic() < deadline:
                for batch in (await consumer.getmany(timeout_ms=500)).values():
                    records.extend(batch)
            return records
        finally:
            await consumer.stop()

    return asyncio.run(read())
