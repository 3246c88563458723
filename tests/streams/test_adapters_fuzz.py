"""Every adapter against hostile input: the only exception is RejectedInput, every event is valid.

Random bytes and random JSON mostly die at the first field; mutating the real fixtures at
random paths (wrong types, deletions, truncation, oversized values) reaches the deep code.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from datetime import UTC
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.adapters import ADAPTERS, AwaitingOrderCustomer, normalize, to_events
from streams.errors import Reason, RejectedInput
from streams.events import Customer
from streams.raw import RawWebhook
from tests.streams.adapter_support import (
    assert_round_trips,
    fixture_body,
    fixture_headers,
    fixture_names,
    raw,
)

SOURCES = sorted(ADAPTERS)
FIXTURES = [(source, name) for source in SOURCES for name in fixture_names(source)]
CUSTOMER = Customer("sam.lee@example.com", "6612345678901", "Sam", "Lee")
# Per-fixture tests run once per fixture (40+), so each needs fewer examples to cover the same ground.
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ_EACH = settings(FUZZ, max_examples=60)

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
    | st.sampled_from(
        ["", "2024-03-02T16:07:31Z", "2024-03-02 16:07:31", "0001-01-01T00:00:00+01:00", "1e999", "NaN", "-5"]
    )
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=25,
)


def check(webhook: RawWebhook) -> None:
    """The contract: a Normalized of valid events, or RejectedInput with a reason. Nothing else."""
    try:
        result = normalize(webhook, lambda _key: CUSTOMER)
    except RejectedInput as exc:
        assert isinstance(exc.reason, Reason)
        return
    assert_round_trips(result.events)
    for event in result.events:
        assert event.source == webhook.source
        assert event.occurred_at.tzinfo is UTC
        assert event.customer.email == event.customer.email.strip().lower()
    if not result.events:
        # Nothing to emit is always explained: skipped, unknown, or (Shopify) a join fact.
        assert result.skipped or result.unknown_status or result.order_customer
    try:
        assert to_events(webhook) == list(result.events)
    except AwaitingOrderCustomer:
        assert webhook.source == "shopify"


@pytest.mark.parametrize("source", SOURCES)
@FUZZ
@given(body=st.binary(max_size=300))
def test_random_bytes(source: str, body: bytes) -> None:
    check(raw(source, body, {"X-Shopify-Topic": "returns/approve"}))


@pytest.mark.parametrize("source", SOURCES)
@FUZZ
@given(body=json_values)
def test_random_json(source: str, body: Any) -> None:
    for topic in ("returns/approve", "refunds/create", "orders/create"):
        check(raw(source, body, {"X-Shopify-Topic": topic}))


@pytest.mark.parametrize(("source", "name"), FIXTURES)
@settings(FUZZ_EACH, max_examples=20)
@given(data=st.data())
def test_truncated_fixture(source: str, name: str, data: st.DataObject) -> None:
    body = fixture_body(source, name)
    cut = data.draw(st.integers(min_value=0, max_value=len(body)))
    check(raw(source, body[:cut], fixture_headers(source, name)))


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(value, dict):
        for key, child in value.items():
            yield (*prefix, key)
            yield from _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield (*prefix, index)
            yield from _paths(child, (*prefix, index))


def _mutate(root: Any, path: tuple[Any, ...], action: str, replacement: Any) -> None:
    parent = root
    for step in path[:-1]:
        parent = parent[step]
    last = path[-1]
    if action == "delete":
        del parent[last]
    elif action == "oversize":
        parent[last] = "x" * 20_000
    elif action == "multiply" and isinstance(parent[last], list):
        parent[last] = parent[last] * 50
    elif action == "stringify":
        parent[last] = json.dumps(parent[last])
    else:
        parent[last] = replacement


@pytest.mark.parametrize(("source", "name"), FIXTURES)
@FUZZ_EACH
@given(data=st.data())
def test_mutated_fixture(source: str, name: str, data: st.DataObject) -> None:
    body = json.loads(fixture_body(source, name))
    for _ in range(data.draw(st.integers(min_value=1, max_value=3))):
        paths = list(_paths(body))
        if not paths:
            break
        path = data.draw(st.sampled_from(paths))
        action = data.draw(st.sampled_from(["replace", "delete", "oversize", "multiply", "stringify"]))
        _mutate(body, path, action, data.draw(json_values))
    headers = fixture_headers(source, name)
    if headers and data.draw(st.booleans()):
        header = data.draw(st.sampled_from(sorted(headers)))
        headers[header] = data.draw(st.text(max_size=40))
    check(raw(source, json.dumps(body).encode(), headers))


@pytest.mark.parametrize(("source", "name"), FIXTURES)
def test_oversized_but_valid_payload_still_normalizes(source: str, name: str) -> None:
    body = json.loads(fixture_body(source, name))
    for key in ("line_items", "products", "refunds"):
        if isinstance(body.get(key), list) and body[key]:
            body[key] = copy.deepcopy(body[key]) * 500
    check(raw(source, json.dumps(body).encode(), fixture_headers(source, name)))


def test_dispatch_covers_every_platform_and_refuses_others() -> None:
    assert SOURCES == ["aftership", "loop", "redo", "shopify", "swap"]
    for function in (to_events, normalize):
        with pytest.raises(RejectedInput) as caught:
            function(raw("narvar", b"{}"))
        assert caught.value.reason is Reason.UNKNOWN_SOURCE
