"""A worker upgraded onto a changelog an older returnsync wrote (format 1) carries on from it.

The customer_returns changelog of a fresh app id is filled with the format-1 values in
tests/fixtures/state_format_1/ (written by the previous release; see
tests/streams/test_state_formats.py), exactly as that release's worker left them. A new worker
restores them, and then: a new event lands on the old state (Klaviyo shows the old state plus
the event), a money fact the old state had applied is re-sent and is still a duplicate (it is not
counted twice), and the table's next value for that customer is the current format.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from agents.topic_plan import STATE_TABLE, changelog_topic
from streams.codec import decode_state
from streams.events import EventType, ReturnEvent
from streams.projection import ProjectionConfig, profile_properties
from streams.reducer import Applied, apply_event, reduce_events
from streams.state import FORMAT
from tests.integration.conftest import WorkerFactory, planned_settings
from tests.integration.harness import SandboxThread, as_klaviyo_json, wait_until
from tests.integration.test_delivery import metric_value
from tests.integration.webhook_support import read_all
from tests.streams.strategies import event, load_fixture, serial_history

FORMAT_1 = Path(__file__).parent.parent / "fixtures" / "state_format_1"
CONFIG = ProjectionConfig()


def format_1_values() -> list[tuple[bytes, bytes]]:
    """(table key, stored value) of every fixture, as the previous release wrote them."""
    values = []
    for path in sorted(FORMAT_1.glob("*.json")):
        value = path.read_bytes().rstrip(b"\n")
        data = orjson.loads(value)
        assert "format" not in data and "applied_ids" in data, f"{path.name} is not format 1"
        values.append((data["customer_key"].encode(), value))
    return values


def last_refund(events: list[ReturnEvent]) -> ReturnEvent:
    return [e for e in events if e.type is EventType.REFUND_ISSUED][-1]


def test_a_worker_carries_on_from_a_format_1_changelog(
    start_worker: WorkerFactory, publish: Callable[..., None], sandbox: SandboxThread,
    bootstrap_servers: str, prefix: str,
) -> None:
    changelog = changelog_topic(planned_settings(prefix), STATE_TABLE)
    stored = dict(format_1_values())
    publish(raw=list(stored.items()), topic=changelog.removeprefix(prefix))

    histories = {
        "noemail@store.com": (serial_history(1200), "2026-03-01T00:00:00Z"),
        "emma.johnson@example.com": (load_fixture("refund_single_return.jsonl"), "2025-04-01T08:00:00Z"),
    }
    resent: list[ReturnEvent] = []
    new: list[ReturnEvent] = []
    wanted: dict[str, dict[str, Any]] = {}
    for email, (history, at) in histories.items():
        key = history[0].customer_key.encode()
        old = decode_state(stored[key])
        assert old is not None
        again = last_refund(history)
        assert apply_event(old, again).applied is Applied.DUPLICATE  # what the worker must see
        fresh = event("return.requested", return_id=f"after-upgrade-{len(new)}", customer=email,
                      occurred_at=at, event_id=f"after-upgrade-{len(new)}:requested")
        after = apply_event(old, fresh).state
        # The old state plus the event is what the whole history plus the event gives.
        truth = reduce_events([*history, fresh])
        assert truth is not None
        assert profile_properties(after, CONFIG) == profile_properties(truth, CONFIG)
        wanted[email] = as_klaviyo_json(profile_properties(after, CONFIG))
        resent.append(again)
        new.append(fresh)

    worker = start_worker()  # waits for /ready: the old states are restored
    publish([*resent, *new])

    def differences() -> dict[str, Any]:
        profiles = sandbox.profiles()
        return {email: {k: v for k, v in (profiles.get(email) or {}).get("properties", {}).items()
                        if k.startswith("returns_")}
                for email, properties in wanted.items()
                if {k: v for k, v in (profiles.get(email) or {}).get("properties", {}).items()
                    if k.startswith("returns_")} != properties}

    wait_until(lambda: not differences(), within=90, what="both profiles at the old state plus the new event")
    duplicates = metric_value(worker, "returnsync_events_processed_total",
                              'result="duplicate",type="refund.issued"')
    assert duplicates == len(resent)

    def newest_values() -> dict[bytes, bytes]:
        latest: dict[bytes, bytes] = {}
        for record in read_all(bootstrap_servers, changelog):
            latest[record.key] = record.value
        return latest

    keys = [history[0].customer_key.encode() for history, _ in histories.values()]
    latest = wait_until(lambda: (values := newest_values()) and all(values[k] != stored[k] for k in keys)
                        and values, within=30, what="the table's new values in the changelog")
    for key in keys:
        head = orjson.loads(latest[key].partition(b"\n")[0])
        assert head["format"] == FORMAT == 3
        assert "applied_ids" not in head
        new_state = decode_state(latest[key])
        assert new_state is not None
        assert as_klaviyo_json(profile_properties(new_state, CONFIG)) == wanted[new_state.identity.email]
    # The customers no event came for keep their format-1 values: nothing rewrites them early.
    untouched = set(stored) - set(keys)
    assert untouched and all(latest[key] == stored[key] for key in untouched)
