"""Prometheus for the tests: the real `promtool` and `prometheus` binaries, and the PromQL
expressions that grafana/ and prometheus/ ship.

The binaries come from Debian's `prometheus` package. On a fresh machine, running as root,
`prometheus_binaries()` installs it with apt-get; anywhere else it raises
`PrometheusUnavailable`, and tests turn that into a failure, never a skip.
"""

from __future__ import annotations

import functools
import json
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

from tests.debian import ToolUnavailable, debian_tool

REPO = Path(__file__).resolve().parents[1]
PROMETHEUS_DIR = REPO / "prometheus"
DASHBOARDS_DIR = REPO / "grafana" / "dashboards"

PrometheusUnavailable = ToolUnavailable


@dataclass(frozen=True)
class PrometheusBinaries:
    promtool: Path
    prometheus: Path


@functools.cache
def prometheus_binaries() -> PrometheusBinaries:
    """The promtool and prometheus on PATH, installing Debian's package first if need be."""
    promtool = debian_tool("prometheus", "promtool")
    return PrometheusBinaries(promtool, debian_tool("prometheus", "prometheus"))


def run_promtool(*args: str | Path, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    """`promtool ARGS` with its output captured as text; the caller checks the exit code."""
    promtool = prometheus_binaries().promtool
    return subprocess.run(
        [str(promtool), *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


# --- the expressions grafana/ and prometheus/ ship ------------------------------------------------


@dataclass(frozen=True)
class Expression:
    where: str  # "dashboard.json: panel 'title' A" or "alerts.yml: AlertName", for messages
    expr: str


def dashboard_files() -> list[Path]:
    return sorted(DASHBOARDS_DIR.glob("*.json"))


def panels(dashboard: dict) -> Iterator[dict]:
    """Every panel, including those inside collapsed rows."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def dashboard_expressions() -> list[Expression]:
    found = []
    for path in dashboard_files():
        for panel in panels(json.loads(path.read_text())):
            for target in panel.get("targets", []):
                found.append(
                    Expression(f"{path.name}: panel {panel['title']!r} {target['refId']}", target["expr"])
                )
    return found


SCOPE = 'job="$job", instance=~"$instance"'
"""The matchers every dashboard selector carries: the job and instance the dashboard's variables pick."""


def for_prometheus(expr: str, rate_interval: str = "1m", time_range: str = "1h") -> str:
    """A dashboard query as Grafana sends it with the defaults: job returnsync, every instance."""
    return (expr.replace("$__rate_interval", rate_interval).replace("$__range", time_range)
            .replace("$job", "returnsync").replace("$instance", ".*"))


def unscoped(expr: str) -> str:
    """The query without the dashboard's job/instance matchers: what it computes."""
    return expr.replace("{" + SCOPE + "}", "").replace("{" + SCOPE + ", ", "{")


def alert_rules() -> list[dict[str, object]]:
    groups = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def alert_expressions() -> list[Expression]:
    return [Expression(f"alerts.yml: {rule['alert']}", str(rule["expr"])) for rule in alert_rules()]


# --- metric names in PromQL -----------------------------------------------------------------------

_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENTIFIER = re.compile(r"(?<![\w.$])([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()")
_KEYWORDS = {
    "and",
    "or",
    "unless",
    "atan2",
    "bool",
    "offset",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "inf",
    "nan",
}


def metric_names_in(expr: str) -> set[str]:
    """Metric names a PromQL expression selects: identifiers that are not functions,
    keywords, labels (in matchers or grouping), durations or Grafana variables."""
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub("", text)
    text = _RANGE.sub("", text)
    text = _GROUPING.sub("", text)
    text = re.sub(r"\$\w+", "", text)
    return {name for name in _IDENTIFIER.findall(text) if name.lower() not in _KEYWORDS}


_SAMPLE_SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("", "_sum", "_count"),
    "info": ("_info",),
    "stateset": ("",),
    "unknown": ("",),
}


def catalogue_metric_names() -> set[str]:
    """Every sample name agents/metrics.py's REGISTRY exports, plus Prometheus' own `up`.
    (`_created` series are left out on purpose: nothing should chart or alert on them.)"""
    from agents.metrics import REGISTRY

    names = {"up"}
    for family in REGISTRY.collect():
        names.update(family.name + suffix for suffix in _SAMPLE_SUFFIXES[family.type])
    return names
