"""`returnsync dev`'s status line: totals from /metrics, rates over the last few seconds, format."""

from __future__ import annotations

import re
from collections import deque

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from agents import metrics
from agents.devstack.stack import _WANTED, COUNTERS, RATE_WINDOW, fit, rates, status_line, totals_from_metrics

# --- rates -----------------------------------------------------------------------------------------


def test_no_rates_from_fewer_than_two_samples():
    assert rates([]) == {}
    assert rates([(10.0, {"ingested": 5})]) == {}


def test_rate_is_the_increase_per_second_between_two_samples():
    samples = [(10.0, {"ingested": 100, "delivered": 40}), (12.0, {"ingested": 160, "delivered": 50})]
    assert rates(samples) == {"ingested": 30.0, "delivered": 5.0}


def test_rate_uses_the_newest_sample_at_least_a_window_old():
    samples = [(float(t), {"ingested": 10.0 * t * t}) for t in range(10)]  # accelerating
    # now=9, window=5: baseline t=4 (the newest with t <= 4), not t=0 (too old) nor t=5 (too new).
    assert rates(samples, window=5) == {"ingested": pytest.approx((810 - 160) / 5)}
    assert rates(samples, window=1) == {"ingested": pytest.approx(810 - 640)}


def test_while_the_history_is_shorter_than_the_window_the_oldest_sample_is_the_baseline():
    samples = [(0.0, {"delivered": 0}), (1.0, {"delivered": 20}), (2.0, {"delivered": 60})]
    assert rates(samples, window=RATE_WINDOW) == {"delivered": 30.0}


def test_a_counter_that_went_down_restarted_from_zero():
    samples = [(0.0, {"ingested": 500}), (2.0, {"ingested": 8})]
    assert rates(samples) == {"ingested": 4.0}


def test_only_counters_get_rates_and_only_when_both_samples_have_them():
    samples = [
        (0.0, {"ingested": 0, "lag": 50, "backlog": 3}),
        (1.0, {"ingested": 4, "lag": 10, "delivered": 9}),
    ]
    assert rates(samples) == {"ingested": 4.0}
    assert rates(samples, counters=["lag"]) == {"lag": 10.0}  # a gauge going down reads as a restart


def test_rates_read_the_bounded_deque_the_dev_loop_keeps():
    samples = deque([(float(t), {"delivered": 3.0 * t}) for t in range(100)], maxlen=8)
    assert rates(samples, window=5) == {"delivered": pytest.approx(3.0)}


def test_samples_at_the_same_instant_give_no_rates():
    assert rates([(3.0, {"ingested": 1}), (3.0, {"ingested": 2})]) == {}


# --- totals from /metrics -------------------------------------------------------------------------


def test_every_family_the_status_line_reads_is_one_the_worker_exports():
    exported = {family.name for family in metrics.REGISTRY.collect()}
    assert set(_WANTED) <= exported, set(_WANTED) - exported
    assert set(COUNTERS) <= {key for key, _ in _WANTED.values()}


def test_totals_sum_labelled_counters_and_lag_and_take_the_oldest_lag_in_seconds():
    registry = CollectorRegistry()
    ingested = Counter("returnsync_events_ingested_total", "", ["source", "type"], registry=registry)
    ingested.labels("loop", "return_requested").inc(3)
    ingested.labels("shopify", "refund_issued").inc(4)
    Counter("returnsync_events_delivered_total", "", ["source", "type"], registry=registry)
    lag = Gauge("returnsync_consumer_lag_messages", "", ["topic", "partition"], registry=registry)
    lag.labels("returns.events", "0").set(5)
    lag.labels("returns.events", "1").set(7)
    lag_seconds = Gauge("returnsync_consumer_lag_seconds", "", ["topic", "partition"], registry=registry)
    lag_seconds.labels("returns.events", "0").set(0.5)
    lag_seconds.labels("returns.events", "1").set(2.25)
    Gauge("returnsync_sync_backlog", "", registry=registry).set(9)
    Counter("returnsync_unrelated_total", "", registry=registry).inc(1000)

    totals = totals_from_metrics(generate_latest(registry).decode())
    # `_created` samples (timestamps) are not counted into the totals.
    assert totals == {"ingested": 7, "delivered": 0, "lag": 12, "lag_seconds": 2.25, "backlog": 9}


def test_no_lag_series_yet_reads_as_no_lag():
    registry = CollectorRegistry()
    Gauge("returnsync_consumer_lag_seconds", "", ["topic", "partition"], registry=registry)
    assert totals_from_metrics(generate_latest(registry).decode()) == {"lag_seconds": 0}


# --- the line ---------------------------------------------------------------------------------------


def test_status_line_shows_totals_rates_lag_and_backlog():
    totals = {"ingested": 1234, "delivered": 1200, "webhooks": 0, "klaviyo_requests": 88, "dead_letters": 1,
              "lag": 34, "lag_seconds": 0.75, "backlog": 5}
    per_second = {"ingested": 56.4, "delivered": 49.6, "webhooks": 0.0, "klaviyo_requests": 2.5}
    assert status_line(totals, per_second) == (
        "ingested 1234 (56/s)  delivered 1200 (50/s)  lag 34 (0.8s)  backlog 5  dead letters 1  "
        "webhooks 0.0/s  klaviyo 2.5 req/s"
    )


def test_status_line_before_any_rate_is_known():
    line = status_line({"ingested": 0, "delivered": 0}, {})
    assert line == ("ingested 0 (-/s)  delivered 0 (-/s)  lag 0 (0.0s)  backlog 0  dead letters 0  "
                    "webhooks -/s  klaviyo - req/s")


def test_on_an_80_column_terminal_the_line_keeps_totals_rates_lag_and_backlog():
    # What `returnsync dev` (300 customers, about 2,400 events) shows while it syncs.
    totals = {"ingested": 2412, "delivered": 2380, "lag": 32, "lag_seconds": 0.4, "backlog": 12,
              "dead_letters": 0, "webhooks": 0, "klaviyo_requests": 610}
    line = fit(status_line(totals, {"ingested": 480.0, "delivered": 95.0}), 79)
    assert line == "ingested 2412 (480/s)  delivered 2380 (95/s)  lag 32 (0.4s)  backlog 12"


def test_fit_drops_whole_fields_never_part_of_a_number():
    line = "ingested 2412 (480/s)  backlog 1234"
    assert fit(line, 200) == line
    assert fit(line, len(line)) == line
    assert fit(line, len(line) - 1) == "ingested 2412 (480/s)"
    assert fit(line, 10) == "ingested 2"  # narrower than one field: nothing better to do
    assert fit("", 5) == ""


def test_status_line_is_one_compact_line():
    big = dict.fromkeys(("ingested", "delivered", "klaviyo_requests", "dead_letters", "lag", "backlog"), 9e6)
    line = status_line({**big, "lag_seconds": 3600.0}, dict.fromkeys(COUNTERS, 12345.0))
    assert "\n" not in line and "\r" not in line
    assert len(line) <= 160, line
    assert re.fullmatch(r"[ -~]+", line), "plain ASCII: rewritable in place on any terminal"


def test_status_line_without_metrics_says_it_is_waiting():
    assert status_line({}, {}) == "waiting for the worker's metrics ..."


def test_terminal_width_falls_back_when_the_stream_has_no_size(tmp_path):
    from io import StringIO

    from agents.devstack.stack import _terminal_width

    assert _terminal_width(StringIO()) == 120
    with open(tmp_path / "log", "w") as file:
        assert _terminal_width(file) == 120
