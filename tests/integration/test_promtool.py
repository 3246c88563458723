"""prometheus/ checked by the real promtool: the scrape config and the alert rules load, the
rule unit tests in alerts_test.yml pass, and the dashboard's queries are valid PromQL.

promtool comes from Debian's `prometheus` package, installed on demand (tests/promtool.py);
when it cannot be had these tests fail with the reason, they are never skipped. What needs no
promtool (each alert's text, runbook link, metrics and unit-test coverage) is checked in the
fast tier, tests/deploy/test_alert_runbooks.py."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # `tests` is a folder of the repo, not an installed package
    sys.path.insert(0, str(REPO))

from tests.promtool import (  # noqa: E402
    PROMETHEUS_DIR,
    PrometheusUnavailable,
    alert_rules,
    dashboard_expressions,
    for_prometheus,
    prometheus_binaries,
    run_promtool,
)


@pytest.fixture(scope="module")
def promtool() -> Path:
    try:
        return prometheus_binaries().promtool
    except PrometheusUnavailable as unavailable:
        reason = str(unavailable)
    pytest.fail(f"promtool is required for these tests: {reason}", pytrace=False)


def output(done) -> str:
    return f"exit {done.returncode}\n{done.stdout}{done.stderr}"


def test_scrape_config_and_its_rule_files_load(promtool):
    done = run_promtool("check", "config", "prometheus/prometheus.yml")
    assert done.returncode == 0, output(done)
    assert "SUCCESS: prometheus/prometheus.yml is valid prometheus config file syntax" in done.stdout
    assert "SUCCESS: 1 rule files found" in done.stdout


def test_alert_rules_load(promtool):
    done = run_promtool("check", "rules", "prometheus/alerts.yml")
    assert done.returncode == 0, output(done)
    assert f"SUCCESS: {len(alert_rules())} rules found" in done.stdout


def test_alert_rule_unit_tests_pass(promtool):
    done = run_promtool("test", "rules", "alerts_test.yml", cwd=PROMETHEUS_DIR)
    assert done.returncode == 0, output(done)
    assert "SUCCESS" in done.stdout and "FAILED" not in done.stdout


def test_promtool_reports_a_wrong_expectation(promtool, tmp_path):
    """The unit tests above can fail: the same rules, expecting silence while a worker is down."""
    shutil.copy(PROMETHEUS_DIR / "alerts.yml", tmp_path / "alerts.yml")
    (tmp_path / "wrong_test.yml").write_text(
        yaml.safe_dump(
            {
                "rule_files": ["alerts.yml"],
                "evaluation_interval": "1m",
                "tests": [
                    {
                        "interval": "1m",
                        "input_series": [
                            {"series": 'up{job="returnsync",instance="worker-1:6066"}', "values": "0x10"}
                        ],
                        "alert_rule_test": [
                            {"alertname": "ReturnsyncWorkerDown", "eval_time": "5m", "exp_alerts": []}
                        ],
                    }
                ],
            }
        )
    )
    done = run_promtool("test", "rules", "wrong_test.yml", cwd=tmp_path)
    assert done.returncode != 0, output(done)
    assert "ReturnsyncWorkerDown" in done.stdout + done.stderr


def test_dashboard_queries_are_valid_promql(promtool, tmp_path):
    expressions = dashboard_expressions()
    assert expressions
    rules = [
        {"record": f"dashboard:query_{n}", "expr": for_prometheus(e.expr)}
        for n, e in enumerate(expressions)
    ]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = run_promtool("check", "rules", path)
    assert done.returncode == 0, output(done)
    assert f"SUCCESS: {len(rules)} rules found" in done.stdout


def test_promtool_rejects_invalid_promql(promtool, tmp_path):
    path = tmp_path / "broken.yml"
    path.write_text(
        yaml.safe_dump(
            {
                "groups": [
                    {
                        "name": "g",
                        "rules": [
                            {
                                "alert": "Broken",
                                "expr": "sum by (topic (returnsync_consumer_lag_messages) > 1",
                            }
                        ],
                    }
                ]
            }
        )
    )
    done = run_promtool("check", "rules", path)
    assert done.returncode != 0, output(done)
