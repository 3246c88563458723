"""Fixture loading and golden expectations shared by the adapter tests.

A fixture is `tests/fixtures/<source>/<name>.json` (the body, byte for byte as the platform would
send it) with optional `<name>.headers.json`. Its expected outcome is
`tests/fixtures/<source>/expected/<name>.json`: the full `event_to_dict` list plus whatever else
`Normalized` reported. After an intended change, regenerate with
`RETURNSYNC_REGEN_GOLDEN=1 .venv/bin/pytest tests/unit -k adapters` and review the diff.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from streams.adapters import Normalized
from streams.events import ReturnEvent, event_from_dict, event_to_dict
from streams.raw import RawWebhook

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
RECEIVED = datetime(2030, 1, 1, tzinfo=UTC)
"""Later than every fixture's own times, so a test sees at once if receipt time leaks in."""


def fixture_names(source: str) -> list[str]:
    return sorted(
        path.stem for path in (FIXTURES / source).glob("*.json") if not path.name.endswith(".headers.json")
    )


def fixture_body(source: str, name: str) -> bytes:
    return (FIXTURES / source / f"{name}.json").read_bytes()


def fixture_json(source: str, name: str) -> Any:
    return json.loads(fixture_body(source, name))


def fixture_headers(source: str, name: str) -> dict[str, str]:
    path = FIXTURES / source / f"{name}.headers.json"
    return json.loads(path.read_text()) if path.exists() else {}


def raw(
    source: str,
    body: bytes | Any,
    headers: dict[str, str] | None = None,
    received_at: datetime = RECEIVED,
) -> RawWebhook:
    """A RawWebhook from bytes, or from a JSON value (serialised compactly)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return RawWebhook(source, received_at, headers or {}, data)


def raw_fixture(source: str, name: str, **headers: str) -> RawWebhook:
    return raw(source, fixture_body(source, name), {**fixture_headers(source, name), **headers})


def as_dicts(events: tuple[ReturnEvent, ...] | list[ReturnEvent]) -> list[dict[str, Any]]:
    return [event_to_dict(event) for event in events]


def outcome_dict(result: Normalized) -> dict[str, Any]:
    """Everything a Normalized says, in JSON form; absent extras left out."""
    out: dict[str, Any] = {"events": as_dicts(result.events)}
    if result.unknown_status is not None:
        out["unknown_status"] = result.unknown_status
    if result.skipped is not None:
        out["skipped"] = result.skipped.value
    if result.awaiting_order is not None:
        out["awaiting_order"] = result.awaiting_order
    if result.order_customer is not None:
        customer = result.order_customer.customer
        out["order_customer"] = {
            "order_key": result.order_customer.order_key,
            "customer": {k: v for k, v in vars_of(customer).items() if v is not None},
        }
    return out


def vars_of(value: Any) -> dict[str, Any]:
    return {name: getattr(value, name) for name in value.__slots__}


def assert_golden(source: str, name: str, result: Normalized) -> None:
    path = FIXTURES / source / "expected" / f"{name}.json"
    actual = outcome_dict(result)
    if os.environ.get("RETURNSYNC_REGEN_GOLDEN"):
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(actual, indent=2, ensure_ascii=False) + "\n")
    expected = json.loads(path.read_text())
    assert actual == expected, f"{source}/{name}: adapter output differs from {path}"


def assert_round_trips(events: tuple[ReturnEvent, ...] | list[ReturnEvent]) -> None:
    for event in events:
        assert event_from_dict(event_to_dict(event)) == event
