"""Drift between the derived return records and the objects Klaviyo holds (custom objects on):
part of `returnsync reconcile` and `replay --dry-run` (agents/commands/reconcile.py).

The API ingests records into a data source but serves them back only as objects of an object
type the merchant mapped over it (README, Returns as custom objects), so the objects are read
from the type titled `RETURNSYNC_CUSTOM_OBJECTS_TYPE`, its properties named as the record's
fields. Without such a type nothing can be compared, and the report says so instead of
passing. `version` is not compared: a return not touched again keeps the version it was
written at. Reads only; a rebuild (`returnsync replay`) rewrites the records.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from agents.klaviyo.bodies import encode
from agents.klaviyo.channels import Channel, Channels
from agents.klaviyo.reconcile import EXAMPLES, differences
from streams.events import customer_ref
from streams.return_records import all_return_records, tenant_of
from streams.state import CustomerState

MISSING = "(no object)"
_NOT_COMPARED = frozenset({"version"})


@dataclass
class RecordDrift:
    compared: int = 0
    drifted: dict[str, list[str]] = field(default_factory=dict)  # record key -> fields
    per_field: Counter[str] = field(default_factory=Counter)
    examples: list[tuple[str, str, str, str, Any, Any]] = field(default_factory=list)
    """(customer key, email, record key, field, derived, klaviyo)."""
    unchecked: list[str] = field(default_factory=list)
    """Why some accounts' records could not be compared (no object type of that title)."""

    def add(self, state: CustomerState, key: str, found: Mapping[str, tuple[Any, Any]]) -> None:
        self.compared += 1
        if not found:
            return
        self.drifted[key] = sorted(found)
        self.per_field.update(found.keys())
        for name, (wanted, got) in sorted(found.items()):
            if len(self.examples) < EXAMPLES:
                self.examples.append((state.customer_key, state.identity.email, key, name, wanted, got))

    @property
    def any(self) -> bool:
        """Drift, or records that could not be checked: neither may pass for none."""
        return bool(self.drifted or self.unchecked)

    def report(self, *, show_customers: bool = False) -> str:
        lines = [f"compared {self.compared} return records: {len(self.drifted)} drifted"]
        lines += [f"  not compared: {why}" for why in self.unchecked]
        lines += [f"  {name}: {count}" for name, count in self.per_field.most_common()]
        if self.examples:
            lines.append("examples (customer, return, field, derived, klaviyo):")
            lines += [f"  {_who(customer, email, show_customers)} {key} {name}: {wanted!r} != {got!r}"
                      for customer, email, key, name, wanted, got in self.examples]
        return "\n".join(lines)

    def summary(self, *, show_customers: bool = False) -> dict[str, Any]:
        return {
            "compared": self.compared,
            "drifted": len(self.drifted),
            "not_compared": list(self.unchecked),
            "per_field": dict(self.per_field.most_common()),
            "examples": [{"customer": _who(customer, email, show_customers), "return": key, "field": name,
                          "derived": wanted, "klaviyo": got}
                         for customer, email, key, name, wanted, got in self.examples],
        }


async def compare_records(
    channels: Channels, states: Mapping[str, CustomerState], type_title: str
) -> RecordDrift:
    drift = RecordDrift()
    by_channel: dict[Channel, list[CustomerState]] = {}
    for state in states.values():
        by_channel.setdefault(channels.for_tenant(tenant_of(state.customer_key)), []).append(state)
    for channel, group in by_channel.items():
        client = channel.client
        type_id = next((str(found["id"]) for found in await client.object_types()
                        if (found.get("attributes") or {}).get("title") == type_title), None)
        if type_id is None:
            drift.unchecked.append(f"account {channel.name} has no object type titled {type_title!r}")
            continue
        stored: dict[str, dict[str, Any]] = {}
        for found in await client.object_records(type_id):
            properties = (found.get("attributes") or {}).get("record_properties") or {}
            if isinstance(properties.get("id"), str):
                stored[properties["id"]] = properties
        for state in group:
            for record in all_return_records(state):
                wanted = _as_json(record.record)
                drift.add(state, record.key, _record_differences(wanted, stored.get(record.key)))
    return drift


def _record_differences(wanted: dict[str, Any], got: dict[str, Any] | None) -> dict[str, tuple[Any, Any]]:
    if got is None:
        return {MISSING: (True, None)}
    compared = {name: value for name, value in wanted.items() if name not in _NOT_COMPARED}
    found = differences(compared, got)
    # A field Klaviyo holds that the derived record no longer has (cleared since) drifted too.
    found.update({name: (None, got[name]) for name in got.keys() - wanted.keys() - _NOT_COMPARED})
    return found


def _as_json(record: Mapping[str, Any]) -> dict[str, Any]:
    """As Klaviyo stores it: money a JSON number, inside item lines too."""
    loaded: dict[str, Any] = orjson.loads(encode(dict(record)))
    return loaded


def _who(customer_key: str, email: str, show_customers: bool) -> str:
    return email if show_customers else customer_ref(customer_key)
