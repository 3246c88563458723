"""grafana/dashboards/returns-sync-health.json: valid, laid out, portable (a data source, job and
instance picked by variables, no hard-coded uid), and charting only metrics agents/metrics.py
exports (plus `up` and the process metrics)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # `tests` is a folder of the repo, not an installed package
    sys.path.insert(0, str(REPO))

from tests.promtool import (  # noqa: E402
    SCOPE,
    catalogue_metric_names,
    dashboard_expressions,
    metric_names_in,
    panels,
    unscoped,
)

DASHBOARD_PATH = REPO / "grafana" / "dashboards" / "returns-sync-health.json"
DASHBOARD = json.loads(DASHBOARD_PATH.read_text())
PANELS = list(panels(DASHBOARD))
CHARTS = [p for p in PANELS if p["type"] != "row"]
EXPRESSIONS = dashboard_expressions()
KNOWN = catalogue_metric_names()


def test_dashboard_identity():
    assert DASHBOARD["uid"] == "returnsync-health"
    assert DASHBOARD["title"] == "Returns sync health"
    assert isinstance(DASHBOARD["schemaVersion"], int)


def test_panel_ids_are_unique():
    ids = [panel["id"] for panel in PANELS]
    assert len(ids) == len(set(ids)), sorted(ids)


def test_panels_fit_the_grid_without_overlapping():
    taken: dict[tuple[int, int], str] = {}
    for panel in PANELS:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["w"] > 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in taken, f"{panel['title']!r} overlaps {taken[(x, y)]!r}"
                taken[(x, y)] = panel["title"]


def variable(name: str) -> dict:
    (found,) = [v for v in DASHBOARD["templating"]["list"] if v["name"] == name]
    return found


def test_the_data_source_job_and_instance_are_variables_not_hard_coded():
    assert variable("datasource")["type"] == "datasource" and variable("datasource")["query"] == "prometheus"
    assert variable("job")["query"]["query"] == "label_values(up, job)"
    assert variable("job")["current"]["value"] == "returnsync"  # the job name docs and compose use
    instance = variable("instance")
    assert instance["multi"] and instance["includeAll"] and instance["allValue"] == ".*"
    assert "$job" in instance["query"]["query"]
    for panel in CHARTS:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], f"{panel['title']!r} has no query"
        for target in panel["targets"]:
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
    provisioned = (REPO / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()
    (uid,) = [source["uid"] for source in yaml.safe_load(provisioned)["datasources"]]
    assert uid not in json.dumps(DASHBOARD), "the provisioned uid is not baked into the dashboard"


def test_every_selector_is_scoped_to_the_chosen_job_and_instances():
    for expression in EXPRESSIONS:
        selectors = re.findall(r"\b(?:returnsync_\w+|up|process_\w+)\b(?!\s*\()(\{[^}]*\})?", expression.expr)
        assert selectors, expression.where
        assert all(selector.startswith("{" + SCOPE) for selector in selectors), expression.where


def test_rate_panels_have_a_per_second_unit():
    for panel in CHARTS:
        queries = " ".join(target["expr"] for target in panel["targets"])
        if "rate(" in queries and "histogram_quantile" not in queries and panel["type"] == "timeseries":
            assert panel["fieldConfig"]["defaults"]["unit"] in ("ops", "reqps", "percentunit"), panel["title"]


def test_metric_name_parser():
    expr = (
        "histogram_quantile(0.95, sum by (since, le) (rate(returnsync_sync_latency_seconds_bucket"
        '{since="ingested", job=~"return.*"}[$__rate_interval]))) - (sum(up{job="x"}) or vector(0))'
        " > bool 1e3 and on(instance) process_open_fds offset 5m"
    )
    assert metric_names_in(expr) == {"returnsync_sync_latency_seconds_bucket", "up", "process_open_fds"}
    assert metric_names_in("topk(5, returnsync_consumer_lag_messages)") == {
        "returnsync_consumer_lag_messages"
    }


def test_catalogue_names_are_sample_names():
    assert {
        "returnsync_events_ingested_total",
        "returnsync_sync_latency_seconds_bucket",
        "returnsync_consumer_lag_seconds",
        "process_cpu_seconds_total",
        "up",
    } <= KNOWN
    assert "returnsync_events_ingested" not in KNOWN  # counters are only read as _total


@pytest.mark.parametrize("expression", EXPRESSIONS, ids=lambda e: e.where)
def test_expression_references_only_catalogue_metrics(expression):
    names = metric_names_in(expression.expr)
    assert names, f"{expression.where}: no metric found in {expression.expr!r}"
    assert names <= KNOWN, f"{expression.where}: not in agents/metrics.py: {sorted(names - KNOWN)}"


def test_rates_use_grafana_rate_interval_and_totals_the_dashboard_range():
    for expression in EXPRESSIONS:
        for function, window in re.findall(r"(\w+)\([^()\[]*\[([^\]]*)\]", expression.expr):
            wanted = "$__range" if function == "increase" else "$__rate_interval"
            assert window == wanted, f"{expression.where}: {function}[{window}]"


def test_every_returnsync_metric_has_a_panel():
    used = set().union(*(metric_names_in(e.expr) for e in EXPRESSIONS))
    wanted = {
        name for name in KNOWN if name.startswith("returnsync_") and not name.endswith(("_sum", "_count"))
    }
    assert not wanted - used, (
        f"agents/metrics.py exports these but no panel charts them: {sorted(wanted - used)}"
    )


def panel(title: str) -> dict:
    matches = [p for p in CHARTS if p["title"] == title]
    assert len(matches) == 1, f"one panel titled {title!r}, found {len(matches)}"
    return matches[0]


def exprs(title: str) -> list[str]:
    """The panel's queries without the job/instance matchers every one carries."""
    return [unscoped(" ".join(target["expr"].split())) for target in panel(title)["targets"]]


def test_sync_latency_shows_p50_p95_p99_by_since():
    quantiles = [
        f"histogram_quantile({q}, sum by (since, le) (rate(returnsync_sync_latency_seconds_bucket"
        "[$__rate_interval])))"
        for q in ("0.5", "0.95", "0.99")
    ]
    assert exprs("Sync latency") == quantiles
    assert panel("Sync latency")["fieldConfig"]["defaults"]["unit"] == "s"


def test_ingested_versus_delivered_gap_rate_and_over_the_range():
    ingested = "sum(rate(returnsync_events_ingested_total[$__rate_interval]))"
    delivered = "sum(rate(returnsync_events_delivered_total[$__rate_interval]))"
    assert exprs("Ingested versus delivered") == [
        ingested,
        delivered,
        f"{ingested} - ({delivered} or vector(0))",
    ]
    # Counters restart at 0 with a worker: a difference of raw totals would jump, increase() does not.
    assert exprs("Gap over the time range (ingested - delivered)") == [
        "sum(increase(returnsync_events_ingested_total[$__range])) - "
        "(sum(increase(returnsync_events_delivered_total[$__range])) or vector(0))"
    ]


def test_lag_in_messages_and_seconds_with_top_partitions():
    assert exprs("Top 5 partitions by lag (messages)") == ["topk(5, returnsync_consumer_lag_messages)"]
    assert exprs("Top 5 partitions by lag (seconds)") == ["topk(5, returnsync_consumer_lag_seconds)"]
    assert panel("Consumer lag (seconds) by topic")["fieldConfig"]["defaults"]["unit"] == "s"


@pytest.mark.parametrize(
    ("title", "grouping"),
    [
        ("Events ingested by source", "sum by (source) (rate(returnsync_events_ingested_total"),
        ("Events ingested by type", "sum by (type) (rate(returnsync_events_ingested_total"),
        ("Webhooks by result", "sum by (source, result) (rate(returnsync_webhooks_received_total"),
        ("Klaviyo requests by status", "sum by (status) (rate(returnsync_klaviyo_requests_total"),
        ("Dead letters by stage and reason", "sum by (stage, reason) (rate(returnsync_deadletters_total"),
        ("Delivery paused by tenant (Klaviyo 401/403)", "max by (tenant) (returnsync_klaviyo_auth_failed)"),
    ],
)
def test_breakdowns(title, grouping):
    assert any(expr.startswith(grouping) for expr in exprs(title)), exprs(title)
