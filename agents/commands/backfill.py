"""`returnsync publish FILE.jsonl`: backfills and bulk loads onto the right topic.

Canonical events go to `returns.events` keyed by customer; platform payloads go to `returns.raw`
as webhook envelopes, exactly as if the platform had sent them, so history before go-live passes
through the same adapters, ids and deduplication as live traffic.

A platform line is one webhook body (a JSON object), kept byte for byte (snapshot event ids hash
the body). Headers the platform would have sent go with `--header NAME:VALUE`, the same for every
line: Shopify names its topic only in `X-Shopify-Topic`, so a Shopify backfill is one file per
topic, and `X-Returnsync-Tenant` sets the tenant. The whole file is checked before anything is
sent: one bad line publishes nothing.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

from agents.commands.publish import Record, publish_records
from agents.settings import Settings
from streams.adapters.common import TENANT_HEADER
from streams.codec import decode_event, encode_event, loads
from streams.errors import Reason, RejectedInput
from streams.events import TENANT_PATTERN as TENANT_RULE
from streams.raw import RawWebhook, encode_raw, raw_key

SHOPIFY_TOPIC = "x-shopify-topic"


class UsageError(ValueError):
    """A command line that cannot work whatever the file holds."""


def parse_headers(pairs: list[str], source: str) -> dict[str, str]:
    """`NAME:VALUE` options into headers; refuses what the adapters would refuse for every line."""
    headers: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition(":")
        if not sep or not name.strip():
            raise UsageError(f"--header {pair!r}: expected NAME:VALUE")
        headers[name.strip().lower()] = value.strip()
    if source == "canonical" and headers:
        raise UsageError("--header is for platform payloads; canonical events carry their own fields")
    if source == "shopify" and not headers.get(SHOPIFY_TOPIC):
        raise UsageError("shopify bodies do not say what they are: pass --header X-Shopify-Topic:<topic> "
                         "(e.g. orders/create, returns/approve, refunds/create), one file per topic")
    tenant = headers.get(TENANT_HEADER)
    if tenant is not None and not TENANT_RULE.match(tenant):
        raise UsageError("X-Returnsync-Tenant must be 1-64 of [A-Za-z0-9_.-]")
    return headers


def read_records(
    path: Path, source: str, headers: Mapping[str, str] | None = None
) -> tuple[list[Record], list[str]]:
    """Each non-blank line becomes a record; bad lines are reported with their line number."""
    records: list[Record] = []
    problems: list[str] = []
    with path.open("rb") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                records.append(_record(line.strip(), source, headers or {}))
            except RejectedInput as exc:
                problems.append(f"{path}:{number}: {exc}")
    return records, problems


def _record(line: bytes, source: str, headers: Mapping[str, str]) -> Record:
    if source == "canonical":
        event = decode_event(line)
        return event.customer_key.encode(), encode_event(event)
    body = loads(line)  # a platform payload must at least be a JSON object
    if not isinstance(body, dict):
        kind = type(body).__name__
        raise RejectedInput(Reason.NOT_AN_OBJECT, f"expected a webhook body (a JSON object), got {kind}")
    raw = RawWebhook(source=source, received_at=datetime.now(UTC), headers=headers, body=line)
    key = raw_key(source, body)
    return (key.encode() if key else None), encode_raw(raw)


async def publish_file(
    settings: Settings, path: Path, source: str, header_options: list[str] | None = None
) -> int:
    try:
        headers = parse_headers(header_options or [], source)
    except UsageError as exc:
        print(exc, file=sys.stderr)
        return 2
    records, problems = read_records(path, source, headers)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print(f"{len(problems)} bad lines: nothing published", file=sys.stderr)
        return 1
    topic = settings.topics.events if source == "canonical" else settings.topics.raw
    sent = await publish_records(settings.kafka(), topic, records, progress=True)
    print(f"published {sent} records to {topic}", file=sys.stderr)
    return 0
