"""A customer's returns as custom-object records: the mapping, its bounds, and that it depends
only on the facts, not on the order they came in."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from streams.events import ReturnEvent
from streams.projection import MAX_TEXT
from streams.reducer import RETURN_ITEMS_KEPT, reduce_events
from streams.return_records import all_return_records, return_records
from streams.state import CustomerState
from tests.streams.strategies import at, customer_streams, event

EXAMPLES = settings(max_examples=100, deadline=None)
CUSTOMER = {"email": "Ava.Brown@example.com", "external_id": "shop-42"}
ITEMS = [
    {"sku": "TEE-BLK-M", "product_name": "Tee", "variant_name": "Black / M", "quantity": 2, "value": "30.00",
     "reason": "too_small", "outcome": "exchange", "new_sku": "TEE-BLK-L"},
    {"sku": "CAP-NVY", "product_name": "Cap", "quantity": 1, "value": "45.50",
     "reason_parent": "changed_mind"},
]


def reduce(events: list[ReturnEvent]) -> CustomerState:
    state = reduce_events(events, item_lines=True)  # as the state agent folds with the feature on
    assert state is not None
    return state


def test_item_lines_are_kept_only_when_asked() -> None:
    on, off = reduce(lifecycle()), reduce_events(lifecycle())
    assert off is not None
    assert [len(record.items) for record in on.returns.values()] == [len(ITEMS)]
    assert [record.items for record in off.returns.values()] == [()]
    # Everything else is the same state: the lines are only for the custom-object record.
    assert off == replace(on, returns={key: replace(record, items=()) for key, record in on.returns.items()})


def lifecycle() -> list[ReturnEvent]:
    common = {"customer": CUSTOMER, "tenant": "acme", "source": "loop", "return_id": "R-1001",
              "order_ref": "#1001", "currency": "USD"}
    return [
        event("return.requested", event_id="e1", occurred_at=at(0), items=ITEMS, **common),
        event("return.received", event_id="e2", occurred_at=at(60), **common),
        event("refund.issued", event_id="e3", occurred_at=at(90), amount="60.00", outcome="refund", **common),
        event("store_credit.issued", event_id="e4", occurred_at=at(95), amount="45.50", **common),
        event("return.closed", event_id="e5", occurred_at=at(120), **common),
    ]


def test_an_open_return_is_one_record_with_its_lines_and_value() -> None:
    state = reduce(lifecycle()[:1])
    [written] = return_records(state, ["R-1001"])
    assert written.key == "acme/R-1001" and written.customer_key == "acme/ava.brown@example.com"
    assert written.version == state.version == 1
    assert dict(written.record) == {
        "id": "acme/R-1001", "tenant": "acme", "return_id": "R-1001", "email": "ava.brown@example.com",
        "external_id": "shop-42", "platform": "loop", "status": "requested", "open": True,
        "reason": "too_small", "order_ref": "#1001",
        "items": [
            {"sku": "TEE-BLK-M", "product": "Tee", "variant": "Black / M", "quantity": 2,
             "value": Decimal("30.00"), "reason": "too_small", "outcome": "exchange", "new_sku": "TEE-BLK-L"},
            {"sku": "CAP-NVY", "product": "Cap", "quantity": 1, "value": Decimal("45.50"),
             "reason": "changed_mind"},
        ],
        "skus": ["TEE-BLK-M", "CAP-NVY"], "item_count": 3, "value": Decimal("105.50"), "currency": "USD",
        "refund_total": Decimal(0), "store_credit_total": Decimal(0),
        "opened_at": "2025-03-01T09:00:00Z", "last_changed_at": "2025-03-01T09:00:00Z", "version": 1,
    }


def test_a_closed_return_has_its_outcome_money_and_times() -> None:
    state = reduce(lifecycle())
    [written] = return_records(state, ["R-1001"])
    record = written.record
    assert (record["status"], record["open"], record["outcome"]) == ("closed", False, "mixed")
    assert (record["refund_total"], record["store_credit_total"]) == (Decimal("60.00"), Decimal("45.50"))
    assert (record["opened_at"], record["last_changed_at"], record["closed_at"]) == (
        "2025-03-01T09:00:00Z", "2025-03-01T11:00:00Z", "2025-03-01T11:00:00Z")
    assert record["items"][0]["sku"] == "TEE-BLK-M"  # the lines stay after later events without them
    assert written.version == 5


def test_only_the_named_counted_returns_get_records() -> None:
    money_only = event("refund.issued", event_id="m1", return_id="R-9", amount="5", occurred_at=at(1),
                       customer=CUSTOMER, tenant="acme")
    state = reduce([*lifecycle()[:1], money_only])
    assert [r.key for r in return_records(state, ["R-9", "R-1001", "R-404"])] == ["acme/R-1001"]
    assert [r.key for r in all_return_records(state)] == ["acme/R-1001"]


def test_texts_are_cut_and_lines_bounded() -> None:
    lines = [{"sku": f"S{n}-" + "x" * 300, "product_name": "p" * 400, "quantity": 1} for n in range(80)]
    state = reduce([event("return.requested", event_id="big", items=lines, occurred_at=at(0),
                          customer={"email": "a@b.co", "external_id": "e" * 300})])
    [written] = all_return_records(state)
    assert len(written.record["items"]) == RETURN_ITEMS_KEPT
    assert written.record["item_count"] == 80
    assert all(len(item["sku"]) <= MAX_TEXT and len(item["product"]) <= MAX_TEXT
               for item in written.record["items"])
    assert "external_id" not in written.record  # cut, it could name another profile


@EXAMPLES
@given(customer_streams(), st.data())
def test_records_depend_on_the_facts_not_their_order(events: list[ReturnEvent], data: st.DataObject) -> None:
    shuffled = data.draw(st.permutations(events), label="delivery order")
    live, other = reduce(events), reduce(shuffled)
    assert ({r.key: r.record for r in all_return_records(other)}
            == {r.key: r.record for r in all_return_records(live)})


@EXAMPLES
@given(customer_streams())
def test_every_counted_return_has_one_record_true_to_the_state(events: list[ReturnEvent]) -> None:
    state = reduce(events)
    written = all_return_records(state)
    counted = {record.return_id for record in state.returns.values() if record.counted}
    assert {r.record["return_id"] for r in written} == counted
    assert len({r.key for r in written}) == len(written)
    for one in written:
        kept = state.returns[one.record["return_id"]]
        assert one.record["status"] == kept.status and one.record["open"] == kept.active
        assert one.record.get("refund_total") == kept.refund_total
        assert one.version == state.version
        assert all(value is not None for value in one.record.values())


@EXAMPLES
@given(customer_streams())
def test_return_refunds_add_up_to_the_customers_total(events: list[ReturnEvent]) -> None:
    state = reduce(events)  # at most four returns: none is settled or dropped
    per_return = sum((record.refund_total for record in state.returns.values()), Decimal(0))
    refunds = [e for e in events if e.type.value == "refund.issued"]
    unattached = sum((e.amount or Decimal(0) for e in refunds if not e.return_id), Decimal(0))
    assert not state.settled_returns
    assert per_return + unattached == state.refund_total
