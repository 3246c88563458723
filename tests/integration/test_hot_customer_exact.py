"""A hot customer ends exact in Klaviyo (issue 10): one placeholder email with ~4,000 events
(hundreds of return lifecycles, redeliveries, events a few places late) among 100 ordinary
customers, through the real broker, one worker and the sandbox. Before the bounded state,
Klaviyo ended with returns_count 897 and returns_active_count 276 where the truth was 789 and
169, and live processing (re-keyed events arriving later) was worse.

The truth is the independent SPEC model of tests/streams/test_reducer_properties.py over the
events in time order, not the reducer. Redeliveries are also sent under a wrong Kafka key, so
the worker re-keys them and they arrive later still: the reducer's guarantee covers a
redelivery at any age, and every first delivery stays within a few places of its time order.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson

from streams.codec import encode_event
from streams.demo import demo_events, serial_returner_events
from streams.events import ReturnEvent
from streams.projection import ProjectionConfig, profile_properties
from streams.reducer import reduce_events
from streams.state import ACTIVE_STATUSES
from tests.integration.conftest import WorkerFactory
from tests.integration.harness import SandboxThread, as_klaviyo_json, expected_klaviyo, wait_until
from tests.integration.test_delivery import metric_value
from tests.integration.webhook_support import read_all
from tests.streams.test_reducer_properties import expected

HOT_EMAIL = "noemail@store.com"
HOT_EVENTS = 3970
WRONG_KEY = b"pos-terminal-7"
"""A producer's key that is not the customer's: such records go through the re-key topic."""


def delivery(hot: list[ReturnEvent], ordinary: list[ReturnEvent]) -> list[tuple[bytes | None, bytes]]:
    """Both streams interleaved as a broker sees them: the hot customer's in its own delivery
    order (already reordered and redelivered by `serial_returner_events`), spread evenly among
    the ordinary ones; every redelivery and every 10th ordinary event under a wrong key."""
    records: list[tuple[bytes | None, bytes]] = []
    seen: set[str] = set()
    ratio = len(hot) / max(1, len(ordinary))
    position = 0.0
    ordinary_left = iter(enumerate(ordinary))
    for event in hot:
        redelivered = event.event_id in seen
        seen.add(event.event_id)
        records.append((WRONG_KEY if redelivered else event.customer_key.encode(), encode_event(event)))
        position += 1
        while position >= ratio:
            position -= ratio
            index, other = next(ordinary_left, (-1, None))
            if other is not None:
                records.append((WRONG_KEY if index % 10 == 0 else other.customer_key.encode(),
                                encode_event(other)))
    for index, other in ordinary_left:
        records.append((WRONG_KEY if index % 10 == 0 else other.customer_key.encode(), encode_event(other)))
    return records


def hot_profile(sandbox: SandboxThread) -> dict[str, Any]:
    profile = sandbox.profiles().get(HOT_EMAIL)
    return dict(profile["properties"]) if profile else {}


def test_a_hot_customer_among_ordinary_ones_ends_exact_in_klaviyo(
    start_worker: WorkerFactory, publish: Callable[..., None], sandbox: SandboxThread,
    bootstrap_servers: str, prefix: str,
) -> None:
    hot = serial_returner_events(HOT_EMAIL, HOT_EVENTS, seed=7)
    ordinary = demo_events(100, seed=41)
    # Dated in the past: an event dated after its Kafka record by more than the allowed skew is
    # refused (future_time), and the hot customer would never be exact.
    assert max(event.occurred_at for event in [*hot, *ordinary]) < datetime.now(UTC)
    assert len({event.event_id for event in hot}) < len(hot), "the history has redeliveries"

    truth = expected(sorted({e.event_id: e for e in hot}.values(), key=lambda e: (e.occurred_at, e.event_id)))
    truth_active = sum(1 for word in truth.statuses.values() if word in ACTIVE_STATUSES)
    assert truth.return_count > 600 and truth_active > 50  # hundreds of lifecycles, many open
    # The reducer over the delivery order projects the same lifetime figures as the model.
    reduced = reduce_events(hot)
    assert reduced is not None
    wanted = as_klaviyo_json(profile_properties(reduced, ProjectionConfig()))
    model_figures = as_klaviyo_json({
        "returns_count": truth.return_count,
        "returns_active_count": truth_active,
        "returns_items_count": truth.item_count,
        "returns_refund_total": truth.refund_total,
        "returns_exchange_count": truth.exchange_count,
        "returns_store_credit_balance": truth.store_credit_balance,
    })
    assert {key: wanted[key] for key in model_figures} == model_figures

    worker = start_worker()
    publish(raw=delivery(hot, ordinary))

    def hot_is_exact() -> bool:
        got = hot_profile(sandbox)
        return {key: got.get(key) for key in model_figures} == model_figures

    try:
        wait_until(hot_is_exact, within=150, every=1.0, what="the hot customer's profile at the truth")
    except AssertionError:
        got = hot_profile(sandbox)
        raise AssertionError(f"hot customer: want {model_figures}, got "
                             f"{ {key: got.get(key) for key in model_figures} }") from None
    assert {key: value for key, value in hot_profile(sandbox).items() if key.startswith("returns_")} == wanted

    ordinary_profiles = expected_klaviyo(ordinary).profiles
    assert len(ordinary_profiles) == 100

    def ordinary_differences() -> list[str]:
        actual = sandbox.profiles()
        return [email for email, properties in ordinary_profiles.items()
                if {k: actual.get(email, {}).get("properties", {}).get(k) for k in properties} != properties]

    wait_until(lambda: not ordinary_differences(), within=60, what="every ordinary customer exact")

    # No valid event was refused: nothing in the dead-letter topic, none counted.
    letters = read_all(bootstrap_servers, prefix + "returns.deadletter")
    assert [orjson.loads(record.value) for record in letters] == []
    assert dead_letters_counted(worker) == 0
    redeliveries = len(hot) - len({event.event_id for event in hot})
    assert (metric_value(worker, "returnsync_events_rekeyed_total", "") or 0) >= redeliveries


def dead_letters_counted(worker: Any) -> float:
    text = httpx.get(f"{worker.web_url}/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("returnsync_deadletters_total{"))
