"""prometheus/alerts.yml as the on-call engineer meets it, checked without promtool: every alert
has a `for:`, a severity, a summary, a description and a runbook_url landing on its own section
of docs/runbook.md; it selects only metrics agents/metrics.py exports; and
prometheus/alerts_test.yml shows it both firing and quiet. promtool loads the rules and runs
those unit tests in tests/integration/test_promtool.py."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # `tests` is a folder of the repo, not an installed package
    sys.path.insert(0, str(REPO))

from tests.promtool import (  # noqa: E402
    PROMETHEUS_DIR,
    alert_expressions,
    alert_rules,
    catalogue_metric_names,
    metric_names_in,
)

ALERTS = {
    "ReturnsyncWebhookAuthFailing",
    "ReturnsyncWebhooksUnavailable",
    "ReturnsyncConsumerLagHigh",
    "ReturnsyncConsumerLagSecondsHigh",
    "ReturnsyncConsumerLagGrowing",
    "ReturnsyncSyncLatencyHigh",
    "ReturnsyncKlaviyoAuthFailed",
    "ReturnsyncKlaviyoRateLimited",
    "ReturnsyncDeadLetterSpike",
    "ReturnsyncStateWriteFailed",
    "ReturnsyncSyncGap",
    "ReturnsyncReconcileDrift",
    "ReturnsyncWorkerDown",
    "ReturnsyncTargetsMissing",
    "ReturnsyncWorkerNotReady",
}
RUNBOOK = REPO / "docs" / "runbook.md"
RUNBOOK_URL = "https://github.com/returnsync/returnsync/blob/main/docs/runbook.md"
"""Where docs/runbook.md is published: the runbook_url of every alert is this plus `#<anchor>`."""
SECTION_PARTS = ("**What it means.**", "**Confirm.**", "**What to do.**")


def github_anchor(heading: str) -> str:
    """The fragment GitHub gives a Markdown heading: lower case, punctuation other than hyphens
    and underscores dropped, each space a hyphen."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def runbook_headings(text: str) -> list[tuple[int, str]]:
    """(level, title) of every heading, skipping fenced code blocks (a PromQL `#` is no heading)."""
    headings, fenced = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (match := re.match(r"(#{1,6}) (.+)", line)):
            headings.append((len(match[1]), match[2].strip()))
    return headings


def alert_sections(text: str) -> dict[str, str]:
    """Each `### <alert>` section under `## Alerts`, by title, with its body."""
    alerts = text.split("\n## Alerts\n", 1)[1].split("\n## ", 1)[0]
    parts = re.split(r"^### (.+)$", alerts, flags=re.MULTILINE)
    return {title.strip(): body for title, body in zip(parts[1::2], parts[2::2], strict=True)}


RUNBOOK_TEXT = RUNBOOK.read_text()
ANCHORS = [github_anchor(title) for _, title in runbook_headings(RUNBOOK_TEXT)]
SECTIONS = alert_sections(RUNBOOK_TEXT)
RULES = alert_rules()


def test_the_alerts_are_the_ones_operators_expect():
    assert {rule["alert"] for rule in RULES} == ALERTS


@pytest.mark.parametrize("rule", RULES, ids=lambda rule: rule["alert"])
def test_alert_has_duration_severity_and_text(rule):
    assert rule.get("for"), f"{rule['alert']}: give it a for: so one bad scrape pages nobody"
    assert rule["labels"]["severity"] in {"warning", "critical"}
    assert rule["annotations"]["summary"].strip()
    assert rule["annotations"]["description"].strip()


@pytest.mark.parametrize("rule", RULES, ids=lambda rule: rule["alert"])
def test_alert_links_to_its_own_runbook_section(rule):
    url = rule["annotations"].get("runbook_url", "")
    page, _, anchor = url.partition("#")
    assert page == RUNBOOK_URL, f"{rule['alert']}: runbook_url {url!r} is not on {RUNBOOK_URL}"
    assert anchor in ANCHORS, f"{rule['alert']}: docs/runbook.md has no heading with anchor #{anchor}"
    assert anchor == github_anchor(rule["alert"]), f"{rule['alert']}: #{anchor} is another alert's section"


def test_runbook_has_one_section_per_alert_and_no_stale_ones():
    assert set(SECTIONS) == ALERTS, (
        f"missing: {sorted(ALERTS - set(SECTIONS))}, for no alert: {sorted(set(SECTIONS) - ALERTS)}"
    )
    assert len(ANCHORS) == len(set(ANCHORS)), "GitHub suffixes a repeated heading's anchor: links would miss"


@pytest.mark.parametrize("alert", sorted(ALERTS))
def test_runbook_section_says_what_it_means_how_to_confirm_and_what_to_do(alert):
    body = SECTIONS.get(alert, "")
    missing = [part for part in SECTION_PARTS if part not in body]
    assert not missing, f"docs/runbook.md section {alert} lacks {missing}"


def test_runbook_queries_use_only_catalogue_metrics():
    blocks = re.findall(r"```promql\n(.*?)```", RUNBOOK_TEXT, flags=re.DOTALL)
    queries = [line for block in blocks for line in block.splitlines() if line.strip()]
    assert queries, "no ```promql block found in docs/runbook.md"
    known = catalogue_metric_names()
    unknown = {query: sorted(metric_names_in(query) - known) for query in queries}
    assert not {query: names for query, names in unknown.items() if names}


@pytest.mark.parametrize("expression", alert_expressions(), ids=lambda e: e.where)
def test_alert_references_only_catalogue_metrics(expression):
    names = metric_names_in(expression.expr)
    known = catalogue_metric_names()
    assert names, f"{expression.where}: no metric found in {expression.expr!r}"
    assert names <= known, f"{expression.where}: not in agents/metrics.py: {sorted(names - known)}"


def test_alert_unit_tests_show_every_alert_firing_and_quiet():
    tests = yaml.safe_load((PROMETHEUS_DIR / "alerts_test.yml").read_text())["tests"]
    checks = [check for test in tests for check in test["alert_rule_test"]]
    firing = {check["alertname"] for check in checks if check.get("exp_alerts")}
    quiet = {check["alertname"] for check in checks if not check.get("exp_alerts")}
    assert firing == ALERTS, f"no firing case for {sorted(ALERTS - firing)}"
    assert quiet == ALERTS, f"no quiet case for {sorted(ALERTS - quiet)}"


# --- the parsing the checks above rely on ---------------------------------------------------------


def test_github_anchor_matches_githubs_rule():
    assert github_anchor("ReturnsyncWorkerDown") == "returnsyncworkerdown"
    assert github_anchor("Before you start") == "before-you-start"
    assert github_anchor(" What's `new`, v2.0? ") == "whats-new-v20"
    assert github_anchor("stage_webhook - kept") == "stage_webhook---kept"


def test_headings_in_code_blocks_and_sections_are_told_apart():
    text = "# T\n## Alerts\n### A\nx\n```promql\n# not a heading\n```\n### B\ny\n## After\n### C\n"
    assert runbook_headings(text) == [(1, "T"), (2, "Alerts"), (3, "A"), (3, "B"), (2, "After"), (3, "C")]
    assert set(alert_sections(text)) == {"A", "B"}
    assert "# not a heading" in alert_sections(text)["A"]
