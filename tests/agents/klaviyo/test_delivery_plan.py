"""Planning Klaviyo requests: singles vs bulk from the rate budget, limits, bodies Klaviyo accepts."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal

import orjson
import pytest

from agents.klaviyo import rejections
from agents.klaviyo.bodies import encode, profile_import_body
from agents.klaviyo.client import KlaviyoRejected
from agents.klaviyo.plan import (
    BULK_EVENTS_MAX,
    BULK_EVENTS_MIN,
    BULK_PROFILES_MAX,
    BULK_RESERVE,
    PAYLOAD_MAX,
    PROFILE_MAX,
    Plan,
    bulk_events_request,
    bulk_profiles_request,
    chunk_events,
    chunk_profiles,
    event_entries,
    event_writes,
    plan_events,
    plan_profiles,
    profile_writes,
)
from klaviyo_sandbox import payloads
from klaviyo_sandbox.rules import consent_fields
from streams.demo import demo_events
from streams.events import Customer, EventType, ReturnEvent
from streams.outbox import CustomerDelivery, SyncRecord, admit, coalesce
from streams.projection import KlaviyoEvent, ProfileUpdate, ProjectionConfig
from streams.reducer import apply_event

NOW = datetime(2026, 11, 1, tzinfo=UTC)


def sync_records(events: list[ReturnEvent], *, item_lines: bool = False) -> list[SyncRecord]:
    """What the state agent would emit for these events, in order (`item_lines`: as it folds
    with custom objects on)."""
    states: dict = {}
    records = []
    for event in events:
        result = apply_event(states.get(event.customer_key), event, item_lines=item_lines)
        states[event.customer_key] = result.state
        records.append(SyncRecord(result.state, event, result.applied, NOW))
    return records


def deliveries(customers: int, seed: int = 1) -> list[CustomerDelivery]:
    return coalesce(sync_records(demo_events(customers, seed=seed)), ProjectionConfig())


def test_bulk_profile_items_clear_with_unset_because_bulk_import_ignores_nulls() -> None:
    update = ProfileUpdate(email="a@shop.example", first_name="Ana",
                           properties={"returns_count": 2, "returns_last_reason": None})
    [write] = profile_writes([CustomerDelivery("default/a@shop.example", "default", update, [], version=4)])
    assert write.item == {
        "type": "profile",
        "attributes": {"email": "a@shop.example", "first_name": "Ana", "properties": {"returns_count": 2}},
        "meta": {"patch_properties": {"unset": ["returns_last_reason"]}},
    }
    assert write.single == profile_import_body(update)  # profile-import clears with null itself
    assert write.single["data"]["attributes"]["properties"]["returns_last_reason"] is None
    assert write.version == 4 and write.size == len(encode(write.item)) + 1
    assert write.single_size == len(encode(write.single))


def test_small_batches_go_single_and_large_ones_bulk_by_the_budget_left() -> None:
    writes = profile_writes(deliveries(40))
    assert plan_profiles(writes, capacity=75) == Plan(writes, [], [])
    plan = plan_profiles(writes, capacity=10)
    assert plan.singles == [] and [w for chunk in plan.chunks for w in chunk] == writes
    events = event_writes(deliveries(40))
    assert len(events) > 40
    # No bulk token free now: singles while the budget lets them out.
    assert plan_events(events, capacity=len(events), bulk_capacity=0) == Plan(events, [], [])
    over = plan_events(events, capacity=len(events) - 1, bulk_capacity=0)
    assert over.singles == [] and [w for chunk in over.chunks for w in chunk] == events


def test_events_go_bulk_once_enough_of_them_and_the_bulk_budget_is_above_its_reserve() -> None:
    events = event_writes(deliveries(40))
    few = events[: BULK_EVENTS_MIN - 1]
    assert plan_events(few, capacity=350, bulk_capacity=10) == Plan(few, [], [])
    enough = events[:BULK_EVENTS_MIN]
    assert plan_events(enough, capacity=350, bulk_capacity=10) == Plan([], [enough], [])
    # The reserve is for batches that cannot go as singles: these still can.
    assert plan_events(enough, capacity=350, bulk_capacity=BULK_RESERVE) == Plan(enough, [], [])
    assert plan_events(enough, capacity=len(enough) - 1, bulk_capacity=0) == Plan([], [enough], [])


def test_one_customer_dominating_a_batch_costs_one_profile_write_and_few_event_requests() -> None:
    """A hot key: hundreds of returns under one shared email, all in one batch."""
    hot = Customer(email="noemail@store.com")
    events = [replace(e, customer=hot, event_id=f"hot:{e.event_id}") for e in demo_events(200, seed=5)]
    ordinary = demo_events(20, seed=6)
    records = sync_records(sorted([*events, *ordinary], key=lambda e: (e.occurred_at, e.event_id)))
    delivered = coalesce(records, ProjectionConfig())
    profiles = plan_profiles(profile_writes(delivered), capacity=75)
    hot_profiles = [w for w in profiles.singles if w.email == "noemail@store.com"]
    assert len(hot_profiles) == 1 and not profiles.chunks and not profiles.refused
    writes = event_writes(delivered)
    plan = plan_events(writes, capacity=350, bulk_capacity=10)
    assert plan.singles == [] and not plan.refused
    assert len(plan.chunks) == -(-len(writes) // BULK_EVENTS_MAX)
    for chunk in plan.chunks:  # the hot customer's events are one entry of each request
        entries = event_entries(chunk)
        assert sum(1 for entry in entries if entry[0].event.email == "noemail@store.com") <= 1


def test_a_profile_too_big_for_klaviyo_is_refused_and_never_planned_to_be_sent() -> None:
    big = ProfileUpdate(email="big@shop.example", properties={"returns_active_skus": ["X" * 1000] * 120})
    delivered = [CustomerDelivery("default/big@shop.example", "default", big, [], version=1),
                 *deliveries(5)]
    for capacity in (0, 75):
        plan = plan_profiles(profile_writes(delivered), capacity=capacity)
        assert [w.email for w in plan.refused] == ["big@shop.example"]
        planned = [*plan.singles, *(w for chunk in plan.chunks for w in chunk)]
        assert len(planned) == len(delivered) - 1 and "big@shop.example" not in {w.email for w in planned}
    [refused] = plan.refused
    assert refused.too_large is not None and "exceeds Klaviyo's 100 KB" in refused.too_large


def test_a_profile_just_under_the_limit_on_both_endpoints_is_sent() -> None:
    update = ProfileUpdate(email="edge@shop.example", properties={"returns_last_reason": "r" * 99_000})
    delivery = CustomerDelivery("default/edge@shop.example", "default", update, [], version=1)
    [write] = profile_writes([delivery])
    assert write.too_large is None and write.single_size <= PROFILE_MAX
    assert plan_profiles([write], capacity=1).singles == [write]


def test_an_event_too_big_for_any_request_is_refused_and_the_others_still_go() -> None:
    big = KlaviyoEvent(email="a@shop.example", metric="Return Requested", unique_id="big", time=NOW,
                       properties={"Notes": ["n" * 90_000] * 60})
    small = KlaviyoEvent(email="a@shop.example", metric="Return Requested", unique_id="small", time=NOW,
                         properties={})
    update = ProfileUpdate(email="a@shop.example", properties={})
    writes = event_writes([CustomerDelivery("default/a@shop.example", "default", update, [big, small])])
    for capacity, bulk in ((350, 0), (0, 10)):
        plan = plan_events(writes, capacity=capacity, bulk_capacity=bulk)
        assert [w.event.unique_id for w in plan.refused] == ["big"]
        assert [w.event.unique_id for w in [*plan.singles, *(w for c in plan.chunks for w in c)]] == ["small"]


def test_profile_chunks_respect_count_and_payload_limits() -> None:
    writes = profile_writes(deliveries(300)) * 40  # 12,000 items
    chunks = chunk_profiles(writes)
    assert [w for chunk in chunks for w in chunk] == writes
    assert all(len(chunk) <= BULK_PROFILES_MAX for chunk in chunks)
    assert all(len(encode(bulk_profiles_request(chunk))) <= PAYLOAD_MAX for chunk in chunks)
    fat = [
        CustomerDelivery(f"default/f{i}@shop.example", "default",
                         ProfileUpdate(email=f"f{i}@shop.example",
                                       properties={"returns_last_reason": "r" * 90_000}),
                         [], version=1)
        for i in range(120)
    ]
    fat_chunks = chunk_profiles(profile_writes(fat))
    assert len(fat_chunks) == 3
    assert all(len(encode(bulk_profiles_request(chunk))) <= PAYLOAD_MAX for chunk in fat_chunks)


def test_event_chunks_respect_limits_and_never_repeat_an_event_within_a_request() -> None:
    writes = event_writes(deliveries(800))
    chunks = chunk_events(writes)
    assert [w for chunk in chunks for w in chunk] == writes
    for chunk in chunks:
        assert len(chunk) <= BULK_EVENTS_MAX
        body = bulk_events_request(event_entries(chunk))
        assert len(encode(body)) <= PAYLOAD_MAX
        keys = [(w.event.email, w.event.metric, w.event.unique_id) for w in chunk]
        assert len(keys) == len(set(keys))


def test_the_same_event_for_two_tenants_on_one_account_is_sent_once() -> None:
    event = ReturnEvent(event_id="loop:refund:1", type=EventType.REFUND_ISSUED, occurred_at=NOW,
                        customer=Customer(email="a@shop.example"), amount=Decimal("5.00"), currency="USD")
    records = sync_records([event, replace(event, tenant="acme")])
    delivered = coalesce(records, ProjectionConfig())
    assert len(delivered) == 2
    assert len(event_writes(delivered)) == 1


def test_bulk_bodies_pass_the_sandboxs_klaviyo_validation_and_carry_no_consent() -> None:
    delivered = deliveries(200)
    profiles = profile_writes(delivered)
    [chunk] = chunk_profiles(profiles)
    profile_body = bulk_profiles_request(chunk)
    parsed = payloads.bulk_profiles(orjson.loads(encode(profile_body)))
    assert len(parsed.accepted) == len(chunk) and not parsed.rejected
    event_chunks = chunk_events(event_writes(delivered))
    for event_chunk in event_chunks:
        body = bulk_events_request(event_entries(event_chunk))
        entries = payloads.bulk_events(orjson.loads(encode(body)), NOW)
        assert sum(len(events) for _, events in entries) == len(event_chunk)
        assert list(consent_fields(body)) == []
    assert list(consent_fields(profile_body)) == []
    for write in profiles:
        assert list(consent_fields(write.single)) == []


def test_admit_drops_profile_writes_older_than_the_floor_and_keeps_equal_ones() -> None:
    delivered = deliveries(10)
    floors = {d.customer_key: d.version for d in delivered}
    floors[delivered[0].customer_key] += 1
    floors[delivered[1].customer_key] -= 1
    fresh, stale = admit(delivered, lambda key: floors.get(key, 0))
    assert stale == [delivered[0]]
    assert fresh == delivered[1:]


def test_coalesce_keeps_the_highest_version_whatever_the_arrival_order() -> None:
    records = sync_records(demo_events(3, seed=2))
    newest = {r.customer_key: max(x.state.version for x in records if x.customer_key == r.customer_key)
              for r in records}
    for delivery in coalesce(list(reversed(records)), ProjectionConfig()):
        assert delivery.version == newest[delivery.customer_key]


def rejection(*pointers: str, status: int = 400) -> KlaviyoRejected:
    errors = [{"detail": f"bad {p}", "source": {"pointer": p}} for p in pointers]
    return KlaviyoRejected(status, "bad", errors)


def test_rejection_pointers_name_the_refused_items() -> None:
    email_pointer = "/data/attributes/profiles/data/3/attributes/email"
    assert rejections.pointed_profiles(rejection(email_pointer), 5) == {
        3: [{"detail": f"bad {email_pointer}", "source": {"pointer": email_pointer}}]
    }
    # One error without an item pointer: nothing can be singled out, the caller bisects.
    assert rejections.pointed_profiles(rejection("/data/attributes/profiles/data/1", "/data"), 5) == {}
    assert rejections.pointed_profiles(rejection("/data/attributes/profiles/data/9"), 5) == {}
    entries = [["a", "b"], ["c"]]
    event_pointer = "/data/attributes/events-bulk-create/data/0/attributes/events/data/1/attributes/time"
    assert set(rejections.pointed_events(rejection(event_pointer), entries)) == {(0, 1)}
    profile_pointer = "/data/attributes/events-bulk-create/data/0/attributes/profile/data/attributes/email"
    assert set(rejections.pointed_events(rejection(profile_pointer), entries)) == {(0, 0), (0, 1)}
    assert rejections.pointed_events(rejection("/data/attributes", status=409), entries) == {}


@pytest.mark.parametrize(
    ("pointer", "index"),
    [("/data/attributes/profiles/data/7", 7), ("/data/attributes/profiles/data/7/attributes/email", 7),
     ("/data", None)],
)
def test_import_error_rows_map_back_to_their_profile(pointer: str, index: int | None) -> None:
    row = {"type": "import-error", "id": "x", "attributes": {
        "code": "duplicate_profile", "detail": "d", "source": {"pointer": pointer},
        "original_payload": {"type": "profile", "attributes": {"email": "Ana@Shop.example"}}}}
    assert rejections.row_index(row) == index
    assert rejections.row_email(row) == "ana@shop.example"
