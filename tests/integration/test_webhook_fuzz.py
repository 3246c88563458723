"""Hostile HTTP against one running worker: every endpoint answers exactly the 2xx/4xx the rules
say (never a 5xx), the worker stays healthy, and whatever it accepted is accounted for: webhooks
that cannot become events are in returns.deadletter with the adapter's reason, events are in
returns.events."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agents.settings import SOURCES_WITH_SECRETS
from streams.adapters import normalize
from streams.errors import RejectedInput
from streams.events import TENANT_PATTERN as TENANT_RULE
from streams.events import event_from_dict
from streams.raw import RawWebhook, decode_raw
from streams.signatures import sign
from tests.integration.conftest import WorkerFactory
from tests.integration.harness import SandboxThread, expected_klaviyo, profile_differences, wait_until
from tests.integration.webhook_support import SECRETS, expected_events, fixture, read_all
from tests.streams.adapter_support import FIXTURES, fixture_body, fixture_headers, fixture_names
from tests.streams.test_adapters_fuzz import json_values

LIMIT = 64 * 1024  # RETURNSYNC_WEBHOOK_MAX_BYTES for this worker: oversized bodies stay cheap
WEBHOOK_FIXTURES = [(source, name) for source in SOURCES_WITH_SECRETS for name in fixture_names(source)]
CANONICAL = [orjson.loads(line) for path in sorted((FIXTURES / "canonical").glob("*.jsonl"))
             for line in path.read_bytes().splitlines() if line.strip()]
HEADER_BYTES = st.binary(max_size=24).map(lambda b: bytes(c for c in b if c >= 0x20 and c != 0x7F).strip())


@dataclass
class Request:
    path: str
    body: bytes
    headers: dict[str, bytes] = field(default_factory=dict)
    chunked: bool = False

    @property
    def source(self) -> str:
        return self.path.removeprefix("/webhooks/")

    def text_headers(self) -> dict[str, str]:
        """As the server reads them: UTF-8 with undecodable bytes smuggled as surrogates."""
        return {k: v.decode("utf-8", "surrogateescape").strip() for k, v in self.headers.items()}


def mutated(value: Any, draw: Any) -> Any:
    """A fixture with one value at a random path deleted or replaced by another type."""
    paths, stack = [], [((), value)]
    while stack:
        path, node = stack.pop()
        if isinstance(node, dict | list):
            children = node.items() if isinstance(node, dict) else enumerate(node)
            for key, child in children:
                paths.append((*path, key))
                stack.append(((*path, key), child))
    if not paths:
        return value
    path = draw(st.sampled_from(paths))
    parent = value
    for step in path[:-1]:
        parent = parent[step]
    if draw(st.booleans()):
        del parent[path[-1]]
    else:
        parent[path[-1]] = draw(json_values)
    return value


@st.composite
def bodies(draw: Any, original: bytes) -> bytes:
    kind = draw(st.sampled_from(["as is", "truncated", "mutated", "json", "bytes", "oversized"]))
    if kind == "truncated":
        return original[: draw(st.integers(0, max(0, len(original) - 1)))]
    if kind == "mutated":
        return json.dumps(mutated(json.loads(original), draw)).encode()
    if kind == "json":
        return orjson.dumps(draw(json_values))
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    if kind == "oversized":
        return b'{"pad":"' + b"x" * draw(st.integers(LIMIT - 9, LIMIT + 2000)) + b'"}'
    return original


@st.composite
def requests(draw: Any) -> Request:
    target = draw(st.sampled_from(["webhook"] * 4 + ["events", "unknown"]))
    if target == "events":
        items = draw(st.lists(st.sampled_from(CANONICAL), min_size=1, max_size=3))
        original = orjson.dumps(items if len(items) > 1 or draw(st.booleans()) else items[0])
        return Request("/events", draw(bodies(original)), chunked=draw(st.booleans()))
    if target == "unknown":
        name = draw(st.text("abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=12))
        return Request(f"/webhooks/{name}", b"{}") if name not in SOURCES_WITH_SECRETS else draw(requests())
    source, name = draw(st.sampled_from(WEBHOOK_FIXTURES))
    body = draw(bodies(fixture_body(source, name)))
    headers = {k: v.encode() for k, v in fixture_headers(source, name).items()}
    if source == "shopify":  # the one source with a secret here: signed, missigned or unsigned
        how = draw(st.sampled_from(["signed", "signed", "signed", "wrong", "none"]))
        if how != "none":
            secret = SECRETS["shopify"] if how == "signed" else "wrong"
            headers.update({k: v.encode() for k, v in sign("shopify", body, secret).items()})
    if draw(st.booleans()):
        name = draw(st.sampled_from(["X-Returnsync-Tenant", "X-Shopify-Topic", "X-Loop-Fuzz", "X-Other"]))
        tenant = st.from_regex(r"[A-Za-z0-9_.-]{1,64}", fullmatch=True).map(str.encode)
        headers[name] = draw(tenant | HEADER_BYTES)
    return Request(f"/webhooks/{source}", body, headers, draw(st.booleans()))


def expected_status(request: Request) -> int:
    """The answer the rules in agents/worker/webhooks.py promise, computed independently of them."""
    if request.path == "/events":
        if len(request.body) > LIMIT:
            return 413
        try:
            payload = orjson.loads(request.body)
            items = payload if isinstance(payload, list) else [payload]
            assert items
            for item in items:
                event_from_dict(item)
        except (orjson.JSONDecodeError, RejectedInput, AssertionError):
            return 400
        return 202
    if request.source not in SOURCES_WITH_SECRETS:
        return 404
    if len(request.body) > LIMIT:
        return 413
    headers = request.text_headers()
    if request.source == "shopify" and sign("shopify", request.body, SECRETS["shopify"]).get(
        "X-Shopify-Hmac-Sha256") != headers.get("X-Shopify-Hmac-Sha256"):
        return 401
    stored_prefixes = ("x-shopify-", "x-loop-", "x-returnsync-")
    kept = {k: v for k, v in headers.items() if k.lower().startswith(stored_prefixes)}
    if any(v != v.encode("utf-8", "surrogateescape").decode("utf-8", "replace") for v in kept.values()):
        return 400
    tenant = headers.get("X-Returnsync-Tenant")
    if tenant is not None and not TENANT_RULE.match(tenant.strip()):
        return 400
    try:
        orjson.loads(request.body)
    except orjson.JSONDecodeError:
        return 400
    return 200


def test_fuzzed_requests_get_the_promised_answer_and_nothing_accepted_is_lost(
    start_worker: WorkerFactory, bootstrap_servers: str, prefix: str, sandbox: SandboxThread
) -> None:
    worker = start_worker(env={"SHOPIFY_WEBHOOK_SECRET": SECRETS["shopify"],
                               "RETURNSYNC_WEBHOOK_MAX_BYTES": str(LIMIT)})
    url = worker.web_url  # type: ignore[attr-defined]
    answers: Counter[int] = Counter()
    accepted: list[Request] = []
    event_ids: set[str] = set()

    @settings(max_examples=200, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(request=requests())
    def one(request: Request) -> None:
        content = iter([request.body[:100], request.body[100:]]) if request.chunked else request.body
        response = httpx.post(url + request.path, content=content, headers=request.headers, timeout=30)
        answers[response.status_code] += 1
        assert response.status_code == expected_status(request), (request, response.text)
        assert response.headers["content-type"].startswith("application/json")
        if response.status_code == 200:
            accepted.append(request)
        if response.status_code == 202:
            event_ids.update(response.json()["event_ids"])

    one()
    assert {200, 202, 400, 401, 404, 413} <= set(answers), f"the fuzzing reached every answer: {answers}"
    assert httpx.get(f"{url}/health").status_code == 200 and httpx.get(f"{url}/ready").status_code == 200

    # Every accepted webhook an adapter refuses is dead-lettered with that adapter's reason.
    def refusal(request: Request) -> tuple[str, bytes, str] | None:
        raw = RawWebhook.received(request.source, request.text_headers(), request.body, datetime.now(UTC))
        try:
            normalize(raw)
        except RejectedInput as exc:
            return request.source, request.body, exc.reason.value
        return None

    refused = Counter(r for r in map(refusal, accepted) if r is not None)
    assert refused, "some accepted webhooks cannot normalize"

    def dead_lettered() -> Counter[tuple[str, bytes, str]]:
        letters = [orjson.loads(r.value) for r in read_all(bootstrap_servers, prefix + "returns.deadletter")]
        found = ((decode_raw(letter["original"].encode()), letter["reason"]) for letter in letters
                 if letter["stage"] == "normalize")
        return Counter((raw.source, raw.body, reason) for raw, reason in found)

    wait_until(lambda: not refused - dead_lettered(), within=60,
               what=f"{sum(refused.values())} refused webhooks in returns.deadletter")
    events = read_all(bootstrap_servers, prefix + "returns.events")
    stored = {orjson.loads(record.value)["event_id"] for record in events}
    assert event_ids <= stored

    # Still doing its job: a genuine webhook reaches Klaviyo (unsigned: RETURNSYNC_DEV=1 here).
    genuine = fixture("loop", "return_created", {"jane.doe@example.com": "after.fuzz@example.com"})
    assert httpx.post(f"{url}/webhooks/loop", content=genuine[1]).status_code == 200
    expected = expected_klaviyo(expected_events([genuine]))
    wait_until(lambda: not profile_differences(expected, sandbox), within=60, what="the genuine webhook")
