"""Drift between the derived state and Klaviyo: `replay --dry-run` and `returnsync reconcile`.

The derived state comes from reducing returns.events (agents/replay.py's scan); Klaviyo's side is
read with GET /api/profiles, 100 emails per request, under the replay's rate share. The report
goes to the operator's terminal (stdout) and may show a few emails as examples; logs and the
drift gauge carry counts only.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from agents import metrics
from agents.klaviyo.bodies import profile_import_body
from agents.klaviyo.channels import Channels
from agents.klaviyo.client import KlaviyoError
from agents.replay import Selection, open_consumer, rate_limited, scan, share
from agents.settings import Settings
from streams.projection import ProjectionConfig, profile_properties, profile_update
from streams.state import CustomerState

EXAMPLES = 5
MISSING = "(no profile)"


@dataclass
class Drift:
    compared: int = 0
    drifted: dict[str, list[str]] = field(default_factory=dict)  # customer key -> properties
    per_property: Counter[str] = field(default_factory=Counter)
    examples: list[tuple[str, str, Any, Any]] = field(default_factory=list)

    def add(self, state: CustomerState, differences: Mapping[str, tuple[Any, Any]]) -> None:
        self.compared += 1
        if not differences:
            return
        self.drifted[state.customer_key] = sorted(differences)
        self.per_property.update(differences.keys())
        for name, (wanted, got) in sorted(differences.items()):
            if len(self.examples) < EXAMPLES:
                self.examples.append((state.identity.email, name, wanted, got))

    def report(self) -> str:
        lines = [f"compared {self.compared} profiles: {len(self.drifted)} drifted"]
        lines += [f"  {name}: {count}" for name, count in self.per_property.most_common()]
        if self.examples:
            lines.append("examples (email, property, derived, klaviyo):")
            lines += [f"  {email} {name}: {wanted!r} != {got!r}"
                      for email, name, wanted, got in self.examples]
        return "\n".join(lines)


def differences(wanted: Mapping[str, Any], got: Mapping[str, Any] | None) -> dict[str, tuple[Any, Any]]:
    """Properties whose Klaviyo value differs from the derived one (None and absent are equal)."""
    if got is None:
        return {MISSING: (True, None)}
    return {name: (value, got.get(name)) for name, value in wanted.items() if not _same(value, got.get(name))}


def _same(wanted: Any, got: Any) -> bool:
    if wanted is None or got is None:
        return wanted is None and got is None
    if isinstance(wanted, bool) or isinstance(got, bool):
        return wanted is got
    if isinstance(wanted, Decimal | int | float) and isinstance(got, int | float):
        return math.isclose(float(wanted), float(got), rel_tol=1e-9, abs_tol=1e-9)
    if isinstance(wanted, list | tuple) and isinstance(got, list | tuple):
        return list(wanted) == list(got)
    return bool(wanted == got)


async def compare(channels: Channels, states: Mapping[str, CustomerState], config: ProjectionConfig) -> Drift:
    drift = Drift()
    by_channel: dict[Any, list[CustomerState]] = {}
    for state in states.values():
        by_channel.setdefault(channels.for_tenant(state.customer_key.split("/", 1)[0]), []).append(state)
    for channel, group in by_channel.items():
        emails = [state.identity.email for state in group]
        found = await channel.client.profiles_by_email(emails)
        klaviyo = {str(p["attributes"].get("email", "")).lower(): p["attributes"].get("properties") or {}
                   for p in found}
        for state in group:
            got = klaviyo.get(state.identity.email.lower())
            drift.add(state, differences(profile_properties(state, config), got))
    metrics.RECONCILE_DRIFT_PROFILES.set(len(drift.drifted))
    return drift


async def repair(channels: Channels, states: Sequence[CustomerState], config: ProjectionConfig) -> None:
    """Write the derived profile of each drifted customer (latest state; events untouched)."""
    for state in states:
        channel = channels.for_tenant(state.customer_key.split("/", 1)[0])
        await channel.client.import_profile(profile_import_body(profile_update(state, config)))


async def report_drift(settings: Settings, states: Mapping[str, CustomerState], *, fix: bool = False) -> int:
    """Print the drift report; exit code 0 when there is none (or it was repaired), 1 when there
    is, 2 when Klaviyo could not be read (so a failure never passes for drift or for none)."""
    channels = Channels.from_settings(settings)
    try:
        try:
            drift = await compare(channels, states, settings.projection)
        except KlaviyoError as exc:
            print(f"could not read Klaviyo profiles: {exc}", file=sys.stderr)
            return 2
        print(drift.report())
        if drift.drifted and fix:
            await repair(channels, [states[key] for key in drift.drifted], settings.projection)
            print(f"repaired {len(drift.drifted)} profiles")
            metrics.RECONCILE_DRIFT_PROFILES.set(0)
            return 0
        return 1 if drift.drifted else 0
    finally:
        await channels.aclose()


async def dry_run(settings: Settings, selection: Selection) -> int:
    """`replay --dry-run`: the drift of the profiles the replay would write. Reads only."""
    consumer = await open_consumer(settings, None)
    try:
        scanned = await scan(consumer, settings.topics.events, selection)
    finally:
        await consumer.stop()
    return await report_drift(settings, scanned.touched())


async def run_reconcile(settings: Settings, args: argparse.Namespace) -> int:
    consumer = await open_consumer(settings, None)
    try:
        scanned = await scan(consumer, settings.topics.events, Selection(tenant=args.tenant))
    finally:
        await consumer.stop()
    keys = sorted(scanned.states)
    if args.sample and args.sample < len(keys):
        keys = random.sample(keys, args.sample)  # a sample, not a secret
    states = {key: scanned.states[key] for key in keys}
    return await report_drift(rate_limited(settings, args.rate_share), states, fix=args.repair)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sample", type=int, default=1000, help="customers to compare (0: all)")
    parser.add_argument("--repair", action="store_true", help="write the derived profile where it drifted")
    parser.add_argument("--tenant", help="only this tenant's customers")
    parser.add_argument("--rate-share", type=share, default=0.5,
                        help="share of the account's Klaviyo limits to use (default 0.5)")
