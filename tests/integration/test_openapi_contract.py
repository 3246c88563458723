"""The HTTP contract against a live worker: schemathesis generates requests from the document the
worker serves at GET /openapi.json (valid, invalid and boundary values, unicode in every string) and
every answer must be documented: no 5xx, a documented status, the documented content type, headers
and body schema. Hand-written hostile requests add what generation does not reach: bodies over the
limit (declared and chunked), content types the worker does not read, unicode in every field of an
event and a webhook, oversized and non-UTF-8 headers, and a customer who has state.

The worker runs secure (RETURNSYNC_DEV=0) with every webhook secret but AfterShip's (so 403 is
reachable), an events token and a customers token. A generated request presents valid credentials
(the platform's signature over the exact body bytes, or the bearer token) two times in three, and
whatever schemathesis generated otherwise, so 401s and 2xx are both in play. A summary (operations,
examples, answers, failures) is printed at the end of the module.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from agents.worker.views import openapi_document
from streams.errors import RejectedInput
from streams.events import event_from_dict
from streams.signatures import sign
from tests.integration.harness import wait_until
from tests.integration.webhook_support import (
    EVENTS_TOKEN,
    SECRETS,
    Stack,
    fixture,
    running_stack,
    unique_email,
)

REPO = Path(__file__).resolve().parents[2]
LIMIT = 16 * 1024
"""RETURNSYNC_WEBHOOK_MAX_BYTES here: bodies over it stay cheap to send."""
CUSTOMERS_TOKEN = "customers-token-8b2c"
UNSIGNED = "aftership"
"""Configured without a secret: its deliveries are refused 403."""
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_headers_conformance, response_schema_conformance]
SEED = 20261205
"""The same requests on every run, so a failure reproduces."""
MAX_EXAMPLES = 400
"""Per operation in the fuzzing phase: with the examples and coverage phases about 1,800 requests, half
a minute on two cores."""
UNICODE = "Zoë ñ 東京 🚚📦 مرحبا \u200b\u0301 \U0001d518\U0001d52b\U0001d526"
"""Accents, CJK, emoji (astral), right-to-left, a zero-width space, a combining mark, maths letters."""


@dataclass
class Tally:
    """What the module sent and got, for the summary printed at its end."""

    cli_summary: list[str] = field(default_factory=list)
    explicit: Counter[str] = field(default_factory=Counter)
    answers: dict[str, Counter[int]] = field(default_factory=lambda: defaultdict(Counter))
    failures: dict[str, str] = field(default_factory=dict)
    """First line of each distinct failure -> its full report (curl reproduction included)."""

    def summary(self) -> list[str]:
        lines = ["schemathesis run against the live worker:", *self.cli_summary,
                 f"hand-written requests: {sum(self.explicit.values())} on {len(self.explicit)} operations, "
                 f"{len(self.failures)} failures"]
        for label, count in sorted(self.explicit.items()):
            answers = ", ".join(f"{status}x{n}" for status, n in sorted(self.answers[label].items()))
            lines.append(f"  {label:<26} {count:>3} requests, answers {answers}")
        lines.extend(f"  FAILURE {report}" for report in self.failures.values())
        return lines


@pytest.fixture(scope="module")
def stack(bootstrap_servers: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    env = {f"{UNSIGNED.upper()}_WEBHOOK_SECRET": "", "RETURNSYNC_CUSTOMER_API_TOKEN": CUSTOMERS_TOKEN,
           "RETURNSYNC_WEBHOOK_MAX_BYTES": str(LIMIT)}
    with running_stack(bootstrap_servers, tmp_path_factory.mktemp("contract"), env) as running:
        yield running


@pytest.fixture(scope="module")
def tally(request: pytest.FixtureRequest) -> Iterator[Tally]:
    counts = Tally()
    yield counts
    # Past pytest's capture: the summary is the point of the run, pass or fail.
    with request.config.pluginmanager.getplugin("capturemanager").global_and_fixture_disabled():
        print("\n" + "\n".join(counts.summary()))


@pytest.fixture(scope="module")
def contract(stack: Stack) -> Any:
    """The document as the live worker serves it, loaded (and validated) by schemathesis."""
    schema = schemathesis.openapi.from_url(f"{stack.url}/openapi.json", timeout=30)
    schema.validate()
    return schema


def credentials(case: Any, body: bytes) -> dict[str, str]:
    """What a genuine caller of this operation presents for these body bytes."""
    path = case.operation.path
    if path == "/events":
        return {"Authorization": f"Bearer {EVENTS_TOKEN}"}
    if path == "/customers/{email}":
        return {"Authorization": f"Bearer {CUSTOMERS_TOKEN}"}
    source = (case.path_parameters or {}).get("source")
    if path == "/webhooks/{source}" and source in SECRETS and source != UNSIGNED:
        return sign(source, body, SECRETS[source])
    return {}


def present_credentials(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    """schemathesis `before_call` hook (the CLI imports this module through SCHEMATHESIS_HOOKS): the
    body is serialised here and sent as these bytes, so a signature covers exactly what goes on the
    wire; two requests in three then present valid credentials, the third what was generated."""
    sent = case.as_transport_kwargs()
    body = json.dumps(sent["json"]).encode() if "json" in sent else sent.get("data") or b""
    body = body.encode() if isinstance(body, str) else body
    if "json" in sent:
        kwargs["data"] = body
    if zlib.crc32(body + case.operation.label.encode()) % 3:
        case.headers = {**(case.headers or {}), **credentials(case, body)}


if os.environ.get("SCHEMATHESIS_HOOKS") == __name__:
    schemathesis.hook("before_call")(present_credentials)


def test_generated_requests_get_documented_answers(stack: Stack, tmp_path: Path, tally: Tally) -> None:
    """`schemathesis run`: examples, coverage (boundaries and every kind of invalid value) and fuzzing
    phases, valid and invalid data, against the document the worker serves. The CLI, not the pytest
    plugin: its fixture-loaded schemas fail on pytest 9 (`'Function' object has no attribute '_nodeid'`)."""
    report = tmp_path / "report.json"
    command = [
        str(Path(sys.executable).with_name("schemathesis")), "run", f"{stack.url}/openapi.json",
        "--checks", ",".join(check.__name__ for check in CHECKS),
        "--phases", "examples,coverage,fuzzing", "--mode", "all", "--max-examples", str(MAX_EXAMPLES),
        "--seed", str(SEED), "--workers", "1", "--request-timeout", "30", "--no-color",
        "--report", "json", "--report-json-path", str(report),
    ]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": __name__, "PYTHONPATH": str(REPO)}
    run = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                         check=False)
    lines = run.stdout.splitlines()
    start = next((n for n, line in enumerate(lines) if " SUMMARY " in line), len(lines))
    tally.cli_summary = [f"  {line}" for line in lines[start:] if line.strip()]
    assert run.returncode == 0, f"schemathesis found failures:\n{run.stdout[-20000:]}\n{run.stderr[-3000:]}"
    result = json.loads(report.read_text())
    documented = {f"{method.upper()} {path}" for path, item in json.loads(openapi_document())["paths"].items()
                  for method in item}
    # The CLI leaves out the operation serving the document it reads (GET /openapi.json).
    assert set(result["valid_rates"]) == documented - {"GET /openapi.json"}
    assert result["operations"]["tested"] == len(documented) - 1 and result["operations"]["errored"] == 0
    assert (result["failures"], result["errors"]) == ([], [])
    assert result["test_cases"]["generated"] >= 100 * len(result["valid_rates"]), result["test_cases"]

    # The worker's own count: signed deliveries and tokened events got through, forged ones did not.
    received = received_by_result(stack.url)
    counts = ", ".join(f"{source}/{outcome} {n}" for (source, outcome), n in sorted(received.items()) if n)
    tally.cli_summary.append(f"  the worker counted (source/result): {counts}")
    signed = ("loop", "redo", "swap", "shopify", "api")
    assert all(received[source, "accepted"] > 0 for source in signed), received
    assert sum(received[source, "bad_signature"] for source in signed) > 0, received
    assert received[UNSIGNED, "no_secret"] > 0 and received["api", "invalid"] > 0, received


def received_by_result(url: str) -> Counter[tuple[str, str]]:
    """returnsync_webhooks_received_total by (source, result), from the worker's /metrics."""
    found: Counter[tuple[str, str]] = Counter()
    for line in requests.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith("returnsync_webhooks_received_total{"):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
            found[labels["source"], labels["result"]] += int(float(line.rsplit(" ", 1)[1]))
    return found


@dataclass
class Hostile:
    what: str
    method: str
    path: str
    parameters: dict[str, str]
    body: bytes | Iterator[bytes] | None
    headers: dict[str, str | bytes]
    expected: int


def validate(case: Any, response: requests.Response, tally: Tally) -> None:
    label = case.operation.label
    tally.explicit[label] += 1
    tally.answers[label][response.status_code] += 1
    try:
        case.validate_response(response, checks=CHECKS)
    except FailureGroup as failure:
        report = str(failure).strip()
        tally.failures.setdefault(f"{label}: {report.splitlines()[0]}", report)
        raise


def hostile_requests(customer: str) -> list[Hostile]:
    events_auth = {"Authorization": f"Bearer {EVENTS_TOKEN}"}
    customers_auth = {"Authorization": f"Bearer {CUSTOMERS_TOKEN}"}
    _, loop_body, loop_headers = fixture("loop", "return_created",
                                         {"jane.doe@example.com": unique_email("contract")})
    event = {**EVENT, "event_id": unique_email("contract-event")}
    unicode_loop = orjson.dumps(every_string(orjson.loads(loop_body), UNICODE))
    huge = b'{"pad":"' + b"x" * LIMIT + b'"}'
    padding = {f"X-Pad-{n}": "p" * 7000 for n in range(5)}  # each under aiohttp's 8190, 35 KB in all

    def signed(source: str, body: bytes, **extra: str | bytes) -> dict[str, str | bytes]:
        return {**loop_headers, **sign(source, body, SECRETS[source]), **extra}

    return [
        Hostile("webhook over the limit, declared", "POST", "/webhooks/{source}", {"source": "loop"},
                huge, signed("loop", huge), 413),
        Hostile("webhook over the limit, chunked", "POST", "/webhooks/{source}", {"source": "shopify"},
                iter([huge[:LIMIT // 2]] * 8), {"Content-Type": "application/json"}, 413),
        Hostile("events over the limit", "POST", "/events", {}, huge, events_auth, 413),
        Hostile("events over the limit, chunked", "POST", "/events", {}, iter([huge] * 4), events_auth, 413),
        Hostile("event as application/xml", "POST", "/events", {}, orjson.dumps(event),
                {**events_auth, "Content-Type": "application/xml"}, 202),
        Hostile("event as multipart/form-data", "POST", "/events", {}, orjson.dumps([event, event]),
                {**events_auth, "Content-Type": "multipart/form-data; boundary=x"}, 202),
        Hostile("events, text that is not JSON", "POST", "/events", {}, UNICODE.encode(),
                {**events_auth, "Content-Type": "text/plain; charset=utf-8"}, 400),
        Hostile("events, bytes that are not UTF-8", "POST", "/events", {}, b"\xff\xfe{\x00",
                {**events_auth, "Content-Type": "application/octet-stream"}, 400),
        Hostile("unicode in every field of an event", "POST", "/events", {}, orjson.dumps(UNICODE_EVENT),
                events_auth, 202),
        Hostile("unicode in every field of a webhook", "POST", "/webhooks/{source}", {"source": "loop"},
                unicode_loop, signed("loop", unicode_loop), 200),
        Hostile("webhook as text/html", "POST", "/webhooks/{source}", {"source": "loop"}, loop_body,
                signed("loop", loop_body, **{"Content-Type": "text/html"}), 200),
        Hostile("webhook with no content type", "POST", "/webhooks/{source}", {"source": "redo"}, loop_body,
                {"Authorization": f"Bearer {SECRETS['redo']}", "Content-Type": ""}, 200),
        Hostile("unicode tenant header", "POST", "/webhooks/{source}", {"source": "loop"}, loop_body,
                signed("loop", loop_body, **{"X-Returnsync-Tenant": UNICODE.encode()}), 400),
        Hostile("kept header not UTF-8", "POST", "/webhooks/{source}", {"source": "loop"}, loop_body,
                signed("loop", loop_body, **{"X-Loop-Topic": b"\xff\xfe return"}), 400),
        Hostile("headers over 32 KiB", "POST", "/webhooks/{source}", {"source": "loop"}, loop_body,
                signed("loop", loop_body, **padding), 431),
        Hostile("unsigned source", "POST", "/webhooks/{source}", {"source": UNSIGNED}, loop_body, {}, 403),
        Hostile("unknown source", "POST", "/webhooks/{source}", {"source": "nope"}, loop_body, {}, 404),
        Hostile("customer with state", "GET", "/customers/{email}", {"email": customer}, None,
                customers_auth, 200),
        Hostile("customer, upper case and spaces", "GET", "/customers/{email}",
                {"email": f"  {customer.upper()} "}, None, customers_auth, 200),
        Hostile("customer without the token", "GET", "/customers/{email}", {"email": customer}, None,
                {}, 401),
        Hostile("customer, token not UTF-8", "GET", "/customers/{email}", {"email": customer}, None,
                {"Authorization": b"Bearer \xe9\xff"}, 401),
        Hostile("unicode customer", "GET", "/customers/{email}", {"email": f"{UNICODE}@exämple.com"}, None,
                customers_auth, 404),
        Hostile("the document itself", "GET", "/openapi.json", {}, None, {}, 200),
        Hostile("unicode tenant", "GET", "/customers/{email}", {"email": customer, "tenant": UNICODE}, None,
                customers_auth, 400),
    ]


def every_string(value: Any, text: str) -> Any:
    """`value` with `text` added to every string in it (keys kept: the adapters look fields up by name),
    emails and codes kept as they are, so the unicode reaches each field rather than failing
    the first check."""
    if isinstance(value, dict):
        return {key: every_string(item, text) for key, item in value.items()}
    if isinstance(value, list):
        return [every_string(item, text) for item in value]
    if not isinstance(value, str) or re.fullmatch(r"[A-Z]{3}|[0-9.:TZ+-]+|(return|refund)\.[a-z_]+", value):
        return value  # currencies, money, times and event types have no unicode form
    if "@" in value:
        return value  # Klaviyo takes ASCII emails only: others are refused (test_poison_inputs.py)
    return f"{value} {text}"


def accepted(event: dict[str, Any]) -> bool:
    try:
        event_from_dict(event)
    except RejectedInput:
        return False
    return True


EVENT = {"event_id": "contract", "type": "return.requested", "occurred_at": "2026-03-01T10:00:00Z",
         "customer": {"email": "contract@example.com", "first_name": "Ann"}, "return_id": "R-1",
         "order_ref": "#1001", "status_raw": "open", "currency": "EUR", "amount": "12.50",
         "items": [{"sku": "SKU-1", "product_name": "Shirt", "quantity": 2, "value": "6.25",
                    "reason": "size"}]}
UNICODE_EVENT = every_string(EVENT, UNICODE)


def test_hostile_requests_get_exactly_the_documented_answer(
    contract: Any, stack: Stack, tally: Tally
) -> None:
    assert accepted(UNICODE_EVENT), "unicode everywhere is a valid event: the worker must take it (202)"
    customer = unique_email("contract-state")
    seed = {"event_id": f"contract-seed-{customer}", "type": "return.requested",
            "occurred_at": "2026-03-01T09:00:00Z", "customer": {"email": customer}, "return_id": "R-SEED"}
    answer = requests.post(f"{stack.url}/events", data=orjson.dumps(seed), timeout=30,
                           headers={"Authorization": f"Bearer {EVENTS_TOKEN}"})
    assert answer.status_code == 202, answer.text
    customers_auth = {"Authorization": f"Bearer {CUSTOMERS_TOKEN}"}
    wait_until(lambda: requests.get(f"{stack.url}/customers/{customer}", headers=customers_auth,
                                    timeout=10).status_code == 200,
               within=60, what=f"{customer}'s state on the worker")

    unexpected = []
    for hostile in hostile_requests(customer):
        operation = contract[hostile.path][hostile.method]
        path_parameters = {k: v for k, v in hostile.parameters.items() if k in ("source", "email")}
        query = {k: v for k, v in hostile.parameters.items() if k == "tenant"}
        case = operation.Case(path_parameters=path_parameters, query=query or None)
        url = stack.url + hostile.path.format(**{k: requests.utils.quote(v, safe="@")
                                                 for k, v in path_parameters.items()})
        response = requests.request(hostile.method, url, params=query, data=hostile.body,
                                    headers=hostile.headers, timeout=30)
        if response.status_code != hostile.expected:
            unexpected.append(f"{hostile.what}: {response.status_code} {response.text[:200]}, "
                              f"expected {hostile.expected}")
        try:
            validate(case, response, tally)
        except FailureGroup as failure:  # every hostile request is sent and judged before failing
            unexpected.append(f"{hostile.what}: {str(failure).strip().splitlines()[0]}")
    assert not unexpected, unexpected

    # Still healthy, and the unicode webhook and event were stored, not just answered.
    assert requests.get(f"{stack.url}/health", timeout=10).status_code == 200
    assert requests.get(f"{stack.url}/ready", timeout=10).status_code == 200
    raw = [orjson.loads(record.value) for record in stack.records("returns.raw")]
    assert any(UNICODE in json.dumps(item, ensure_ascii=False) for item in raw), "the unicode webhook stored"
    stored = {orjson.loads(record.value)["event_id"] for record in stack.records("returns.events")}
    assert UNICODE_EVENT["event_id"] in stored, "the unicode event stored"
