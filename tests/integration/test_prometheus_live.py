"""Every query grafana/ and prometheus/ ship returns data from a real Prometheus scraping a real
worker under traffic: no panel or alert points at a metric the worker does not export.

Prometheus is Debian's binary (tests/promtool.py installs it when missing; a failure, never a
skip, when it cannot), on a free loopback port, scraping the worker every second with the repo's
alerts.yml loaded. The traffic is what an operator's first hour looks like: demo returns, invalid
events (dead letters), webhooks with good and bad signatures, Klaviyo answering 429 and 503.
"""

from __future__ import annotations

import asyncio
import math
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml

from agents.devstack.broker import free_port
from agents.devstack.processes import ChildProcess
from agents.kafka import KafkaConnection
from agents.settings import Settings
from agents.worker.app import build_app
from streams.demo import demo_events
from streams.signatures import sign
from tests.integration.conftest import WorkerFactory
from tests.integration.harness import SandboxThread, expected_klaviyo, wait_until
from tests.promtool import (
    PROMETHEUS_DIR,
    Expression,
    PrometheusUnavailable,
    alert_rules,
    dashboard_expressions,
    for_prometheus,
    metric_names_in,
    prometheus_binaries,
)

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"
SCRAPE_INTERVAL = "1s"
RATE_INTERVAL = "1m"
"""What $__rate_interval becomes: ~60 one-second scrapes, and long enough that every burst of
this test's traffic is still inside the window when the queries run."""
LOOP_SECRET = "loop-live-test-secret"

INVALID_EVENTS = [
    (b"bad-1", b"{not json"),
    (b"bad-2", b"[1, 2, 3]"),
    (b"bad-3", orjson.dumps({"event_id": "x1", "type": "return.requested"})),
    (b"bad-4", orjson.dumps({"event_id": "x2", "type": "return.teleported",
                             "occurred_at": "2026-01-01T00:00:00Z", "customer": {"email": "a@b.co"},
                             "return_id": "R"})),
]


# --- Prometheus -----------------------------------------------------------------------------------


@dataclass
class Prometheus:
    url: str
    process: subprocess.Popen[bytes]
    log_file: Path

    def api(self, path: str, **params: str) -> Any:
        response = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=10)
        body = response.json()
        if body.get("status") != "success":
            raise AssertionError(f"/api/v1/{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> Any:
        return self.api("query", query=expr)

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])


@contextmanager
def running_prometheus(targets: list[str], workdir: Path) -> Iterator[Prometheus]:
    try:
        binary = prometheus_binaries().prometheus
    except PrometheusUnavailable as unavailable:
        pytest.fail(f"Prometheus is required for this test: {unavailable}", pytrace=False)
    config = {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
        "rule_files": [str(PROMETHEUS_DIR / "alerts.yml")],
        "scrape_configs": [
            {
                "job_name": "returnsync",
                "metrics_path": "/metrics",
                "scrape_timeout": SCRAPE_INTERVAL,
                "static_configs": [{"targets": targets}],
            }
        ],
    }
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log_file = workdir / "prometheus.log"
    with open(log_file, "ab") as output:
        process = subprocess.Popen(
            [
                str(binary),
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
        )
    prometheus = Prometheus(f"http://127.0.0.1:{port}", process, log_file)
    try:
        deadline = time.monotonic() + 30
        while not _answers(f"{prometheus.url}/-/ready"):
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"Prometheus did not become ready:\n{prometheus.log_tail()}")
            time.sleep(0.2)
        yield prometheus
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


# --- the queries ----------------------------------------------------------------------------------

_COMPARISONS = ("==", "!=", ">=", "<=", ">", "<")


def comparison_sides(expr: str) -> tuple[str, str, str]:
    """`<query> <op> <threshold>` split at its one top-level comparison (outside brackets and
    strings). Alert rules are written that way so their query can be read and graphed alone."""
    depth, quote, found = 0, "", []
    i = 0
    while i < len(expr):
        char = expr[i]
        if quote:
            if char == "\\":
                i += 1
            elif char == quote:
                quote = ""
        elif char in "\"'`":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif depth == 0:
            op = next((op for op in _COMPARISONS if expr.startswith(op, i)), None)
            if op is not None:
                found.append((i, op))
                i += len(op)
                continue
        i += 1
    if len(found) != 1:
        ops = [op for _, op in found]
        raise AssertionError(f"expected one top-level comparison in {expr!r}, found {ops}")
    ((at, op),) = found
    threshold = expr[at + len(op):].strip().removeprefix("bool").strip()
    return expr[:at].strip(), op, threshold


def queries() -> list[Expression]:
    """Every dashboard target, and both sides of every alert that select a metric."""
    found = [Expression(e.where, for_prometheus(e.expr, RATE_INTERVAL))
             for e in dashboard_expressions()]
    for rule in alert_rules():
        query, _, threshold = comparison_sides(" ".join(str(rule["expr"]).split()))
        found.append(Expression(f"alerts.yml: {rule['alert']} (query)", query))
        if metric_names_in(threshold):
            found.append(Expression(f"alerts.yml: {rule['alert']} (threshold)", threshold))
    return found


def test_alert_expressions_split_into_query_and_threshold() -> None:
    assert comparison_sides('up{job="returnsync"} == 0') == ('up{job="returnsync"}', "==", "0")
    assert comparison_sides("sum by (topic) (x{a=~\"b>c\"}) > bool 1e4") == (
        'sum by (topic) (x{a=~"b>c"})', ">", "1e4")
    assert comparison_sides("a - (b or vector(0)) > 0.05 * c") == ("a - (b or vector(0))", ">", "0.05 * c")
    with pytest.raises(AssertionError, match="one top-level comparison"):
        comparison_sides("a > 1 and b < 2")


def no_data(prometheus: Prometheus, expressions: list[Expression]) -> list[str]:
    """Expressions with no sample, or only NaN ones (a quantile of nothing): what a panel would
    show as "No data"."""
    problems = []
    for expression in expressions:
        try:
            data = prometheus.query(expression.expr)
        except AssertionError as error:
            problems.append(f"{expression.where}: {expression.expr}\n      error: {error}")
            continue
        if data["resultType"] == "scalar":
            samples = [data["result"]]
        elif data["resultType"] == "vector":
            samples = [series["value"] for series in data["result"]]
        else:
            kind = data["resultType"]
            problems.append(f"{expression.where}: {expression.expr}\n      a {kind}, not a vector")
            continue
        if not any(not math.isnan(float(value)) for _, value in samples):
            what = "no series" if not samples else "only NaN"
            problems.append(f"{expression.where}: {expression.expr}\n      {what}")
    return problems


# --- the test -------------------------------------------------------------------------------------


def post_webhooks(worker_url: str) -> list[str]:
    """A signed Loop webhook and a forged one; their statuses, for the failure message."""
    body = (FIXTURES / "loop" / "return_created.json").read_bytes()
    answers = []
    for what, headers in (("signed", sign("loop", body, LOOP_SECRET)), ("forged", {"X-Loop-Signature": "x"})):
        response = httpx.post(f"{worker_url}/webhooks/loop", content=body, timeout=30,
                              headers={**headers, "Content-Type": "application/json"})
        answers.append(f"{what} POST /webhooks/loop -> {response.status_code}")
    return answers


@contextmanager
def trickle(publish: Callable[..., None], every: float = 1.0) -> Iterator[None]:
    """A few more return lifecycles published every `every` seconds until the block ends."""
    events = demo_events(200, seed=22, tenant="trickle")
    stop = threading.Event()

    def run() -> None:
        for start in range(0, len(events), 4):
            if stop.wait(every):
                return
            publish(events[start:start + 4])

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(30)


def test_every_dashboard_panel_and_alert_query_returns_data_from_a_live_worker(
    start_worker: WorkerFactory, publish: Callable[..., None], sandbox: SandboxThread, tmp_path: Path
) -> None:
    expressions = queries()
    worker = start_worker(env={"LOOP_WEBHOOK_SECRET": LOOP_SECRET})
    url: str = worker.web_url  # type: ignore[attr-defined]
    target = url.removeprefix("http://")

    with running_prometheus([target], tmp_path / "prometheus") as prometheus:
        wait_until(lambda: prometheus.query('up{job="returnsync"} == 1')["result"],
                   within=30, what=f"Prometheus scraping {target}")

        # Klaviyo pushes back: two 429s on events, two 503s on profile imports; both retried.
        sandbox.admin("POST", "faults", json={"status": 429, "count": 2, "endpoint": "/api/events"})
        sandbox.admin("POST", "faults", json={"status": 503, "count": 2, "endpoint": "/api/profile-import"})
        events = demo_events(12, seed=21)
        publish(events, raw=INVALID_EVENTS)
        webhooks = post_webhooks(url)

        expected = expected_klaviyo(events)
        wait_until(lambda: sandbox.event_keys() >= expected.events, within=60,
                   what=f"{len(expected.events)} timeline events in the sandbox")
        wait_until(lambda: not sandbox.admin("GET", "faults"), within=30, what="both faults used up")
        # Scraped after the last delivery: Prometheus has seen the traffic, not only the worker.
        wait_until(
            lambda: prometheus.query(
                f"sum(returnsync_events_delivered_total) >= {len(events)}"
                f" and sum(returnsync_deadletters_total) >= {len(INVALID_EVENTS)}"
            )["result"],
            within=30, what="a scrape showing every event delivered and every invalid one dead-lettered",
        )

        # Lag is measured every 5 s and deriv() needs two samples: poll rather than guess. Traffic
        # keeps flowing while the queries run, as on a live worker: a ratio of rates over the
        # window (mean batch size, a quantile) is NaN once the opening burst is a window old.
        with trickle(publish):
            deadline = time.monotonic() + 30
            problems = no_data(prometheus, expressions)
            while problems and time.monotonic() < deadline:
                time.sleep(1)
                problems = no_data(prometheus, expressions)
        control = Expression("control", f"sum(rate(returnsync_not_a_metric_total[{RATE_INTERVAL}]))")
        assert no_data(prometheus, [control]), "the check must report a query of a missing metric"
        assert not problems, (
            f"{len(problems)} of {len(expressions)} queries return no data from a live worker "
            f"(a panel or alert pointing at a metric that is not exported, or not under this traffic):\n  "
            + "\n  ".join(problems) + "\n\ntraffic: " + "; ".join(webhooks)
        )

        rules = [rule for group in prometheus.api("rules")["groups"] for rule in group["rules"]]
        assert {rule["name"] for rule in rules} == {rule["alert"] for rule in alert_rules()}
        broken = [f"{rule['name']}: {rule.get('lastError')}" for rule in rules if rule["health"] != "ok"]
        assert not broken, f"alert rules failing to evaluate: {broken}"


# --- /health, /ready, /metrics --------------------------------------------------------------------


@dataclass
class Observation:
    ready: tuple[int, Any]
    health: tuple[int, Any]
    worker_ready_metric: str


def _body(response: httpx.Response) -> Any:
    """The JSON answer, or the text of one that is not JSON (a 500 page): observed, not raised."""
    try:
        return response.json()
    except ValueError:
        return response.text[:200]


def watch(url: str, stop: threading.Event, seen: list[Observation]) -> None:
    """Poll /ready, /health and /metrics from before the worker listens until `stop`."""
    with httpx.Client(timeout=2) as client:
        while not stop.is_set():
            try:
                ready = client.get(f"{url}/ready")
                health = client.get(f"{url}/health")
                scrape = client.get(f"{url}/metrics")
            except httpx.HTTPError:
                time.sleep(0.02)
                continue
            gauge = [line for line in scrape.text.splitlines() if line.startswith("returnsync_worker_ready ")]
            seen.append(Observation((ready.status_code, _body(ready)), (health.status_code, _body(health)),
                                    gauge[0].split()[1] if gauge else "missing"))
            time.sleep(0.02)


def group_rebalances(worker: ChildProcess) -> int:
    """How many times the worker's consumer groups (Faust's and the sync consumer's) have
    (re)balanced so far. aiokafka logs this line before it calls the revocation listener, which
    is what turns /ready to 503, so a 503 caused by a rebalance is always preceded by one more
    of these lines."""
    group = worker.env["RETURNSYNC_APP_ID"]  # the sync consumer's group only starts with it
    log = worker.log_file.read_text(errors="replace")
    groups = re.findall(r"Revoking previously assigned partitions .* for group (\S+)", log)
    return groups.count(group) + groups.count(f"{group}-klaviyo-sync")  # both count for /ready


def test_not_ready_before_the_consumer_starts() -> None:
    """The web server listens before Faust starts the consumer thread: /ready (and the gauge in
    /metrics) must answer "not ready" then, not a 500 from ConsumerNotStarted."""
    env = {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1", "KLAVIYO_BASE_URL": "http://127.0.0.1:1",
           "KLAVIYO_API_KEY": "unused", "RETURNSYNC_APP_ID": "not-started", "RETURNSYNC_DEV": "1"}

    async def check() -> bool:
        return build_app(Settings.from_env(env), KafkaConnection("127.0.0.1:1")).ready()

    assert asyncio.run(check()) is False


def test_health_ready_and_metrics_while_starting_and_once_up(start_worker: WorkerFactory) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    stop = threading.Event()
    seen: list[Observation] = []
    watcher = threading.Thread(target=watch, args=(url, stop, seen), daemon=True)
    watcher.start()
    try:
        worker = start_worker(port=port)  # returns once /ready answered 200
    finally:
        stop.set()
        watcher.join(10)
    rebalances = group_rebalances(worker)  # read after the watcher stopped: covers all it saw

    def up() -> bool:
        """/health, /ready and the gauge all say up (one sample each)."""
        health = httpx.get(f"{url}/health", timeout=5)
        assert (health.status_code, health.json()) == (200, {"status": "ok"})
        ready = httpx.get(f"{url}/ready", timeout=5)
        scrape = httpx.get(f"{url}/metrics", timeout=5)
        assert scrape.status_code == 200
        assert scrape.headers["content-type"].startswith("text/plain; version=0.0.4")
        assert (ready.status_code, _body(ready)) in ((200, {"ready": True}), (503, {"ready": False}))
        return ready.status_code == 200 and "returnsync_worker_ready 1.0" in scrape.text.splitlines()

    # Up, and staying up: a worker that stops being ready after /ready answered 200 must have
    # been through another rebalance of its group (a real one stays legitimate; it ends ready).
    if not up():
        assert group_rebalances(worker) > 1, "not ready after /ready answered 200, with no rebalance"
        wait_until(up, within=90, what="/ready and returnsync_worker_ready back up after the rebalance")

    # Starting: the web server listens seconds before the group assigns partitions (~5 s on the
    # embedded broker), so the watcher sees the not-ready phase: /health 200, /ready 503.
    assert seen, "the watcher never reached the worker"
    phases = sorted({(o.ready[0], str(o.ready[1]), o.worker_ready_metric) for o in seen})
    assert all(o.health == (200, {"status": "ok"}) for o in seen), "/health must not depend on readiness"
    assert all(o.ready in ((503, {"ready": False}), (200, {"ready": True})) for o in seen), phases
    assert seen[0].ready == (503, {"ready": False}), f"first answer was ready: {phases}"
    assert any(o.ready[0] == 503 and o.worker_ready_metric == "0.0" for o in seen), phases
    statuses = [o.ready[0] for o in seen]
    first_ready = statuses.index(200) if 200 in statuses else len(statuses)
    assert rebalances >= 1, "the worker's consumer group never joined, yet /ready answered 200"
    # A second rebalance of the group at start-up (the broker asks the member to rejoin) takes the
    # worker back through revocation and recovery: /ready is 503 again, correctly. With only the
    # first assignment, going back to 503 is a readiness bug.
    if 503 in statuses[first_ready:]:
        assert rebalances > 1, (
            f"/ready went back to 503 with no rebalance (the group balanced {rebalances} time): {statuses}")
