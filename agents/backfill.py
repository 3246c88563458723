"""`returnsync publish FILE.jsonl`: backfills and bulk loads onto the right topic.

Canonical events go to `returns.events` keyed by customer; platform payloads go to `returns.raw`
as webhook envelopes, exactly as if the platform had sent them, so history before go-live passes
through the same adapters, ids and deduplication as live traffic.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path

from agents.publish import Record, publish_records
from agents.settings import Settings
from streams.codec import decode_event, encode_event, loads
from streams.errors import RejectedInput


def read_records(path: Path, source: str) -> tuple[list[Record], list[str]]:
    """Each non-blank line becomes a record; bad lines are reported with their line number."""
    records: list[Record] = []
    problems: list[str] = []
    with path.open("rb") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                records.append(_record(line.strip(), source))
            except RejectedInput as exc:
                problems.append(f"{path}:{number}: {exc}")
    return records, problems


def _record(line: bytes, source: str) -> Record:
    if source == "canonical":
        event = decode_event(line)
        return event.customer_key.encode(), encode_event(event)
    from streams.raw import RawWebhook, encode_raw, raw_key

    loads(line)  # a platform payload must at least be JSON
    raw = RawWebhook(source=source, received_at=datetime.now(UTC), headers={}, body=line)
    key = raw_key(source, loads(line))
    return (key.encode() if key else None), encode_raw(raw)


async def publish_file(settings: Settings, path: Path, source: str) -> int:
    records, problems = read_records(path, source)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print(f"{len(problems)} bad lines: nothing published", file=sys.stderr)
        return 1
    topic = settings.topics.events if source == "canonical" else settings.topics.raw
    assert settings.kafka_bootstrap_servers is not None
    sent = await publish_records(settings.kafka_bootstrap_servers, topic, records, progress=True)
    print(f"published {sent} records to {topic}", file=sys.stderr)
    return 0
