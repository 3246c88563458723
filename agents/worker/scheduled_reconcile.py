"""Scheduled reconcile inside the worker (RETURNSYNC_RECONCILE_INTERVAL seconds; 0 is off).

The worker's own table is the derived state of its partitions, so a sample of it is compared
with Klaviyo directly, without reading the topic. A customer whose state is still on its way to
Klaviyo would look drifted: drifted customers are checked again after a grace period, and only
those whose state did not change meanwhile and still differ count, in the log and the drift gauge.

A repair (RETURNSYNC_RECONCILE_REPAIR) writes each such customer's state as the table holds it at
that moment, never the sampled one, and only where live delivery's version floors allow
(agents/commands/reconcile.py `repair`), spending the account's budget with the sync agent (one budget per
account in a process, klaviyo/channels.py). Customers it could not settle are compared again in
the next round, whatever the sample.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Mapping, Sequence

from aiokafka.errors import KafkaError

from agents import metrics
from agents.klaviyo.channels import Channels
from agents.klaviyo.client import KlaviyoError
from agents.klaviyo.reconcile import Drift, FloorsUnreadable, compare, read_floors, repair
from agents.klaviyo.versions import MemoryVersions
from agents.topic_plan import STATE_TABLE, changelog_topic, versions_topic
from agents.worker.runtime import Runtime
from streams.codec import decode_state
from streams.partitioning import expected_partition
from streams.state import CustomerState

log = logging.getLogger(__name__)


def register(runtime: Runtime) -> None:
    settings = runtime.settings
    if settings.reconcile_interval <= 0:
        return
    grace = max(5.0, 4 * settings.sync_batch_seconds)
    unsettled: set[str] = set()  # customers a repair left perhaps stale: compared again next round

    @runtime.app.timer(interval=settings.reconcile_interval)  # type: ignore[untyped-decorator]
    async def reconcile_sample() -> None:
        if not runtime.ready():
            return
        channels = Channels.from_settings(settings)
        try:
            await _reconcile(runtime, channels, grace, unsettled)
        except (KlaviyoError, KafkaError, FloorsUnreadable) as exc:
            log.warning("reconcile stopped: %s", exc)
        finally:
            await channels.aclose()


async def _reconcile(runtime: Runtime, channels: Channels, grace: float, unsettled: set[str]) -> None:
    settings = runtime.settings
    sampled = _sample(runtime, settings.reconcile_sample, unsettled)
    unsettled.clear()
    first = await compare(channels, {key: state for key, (_, state) in sampled.items()}, settings.projection)
    drift, changed = first, 0
    if first.drifted:
        await asyncio.sleep(grace)
        settled = {key: sampled[key][1] for key in first.drifted if _stored(runtime, key) == sampled[key][0]}
        changed = len(first.drifted) - len(settled)
        # Only the second look counts: a customer that changed meanwhile is on its way to Klaviyo.
        drift = await compare(channels, settled, settings.projection) if settled else Drift()
    metrics.RECONCILE_DRIFT_PROFILES.set(len(drift.drifted))
    log.info("reconcile compared=%d drifted=%d changed_meanwhile=%d", first.compared, len(drift.drifted),
             changed)
    if not (drift.drifted and settings.reconcile_repair):
        return

    async def current(keys: Sequence[str]) -> Mapping[str, CustomerState]:
        # The table now, not the sample: the customer may have changed since it was compared.
        if not runtime.ready():
            return {}
        states = {key: decode_state(_stored(runtime, key)) for key in keys}
        return {key: state for key, state in states.items() if state is not None}

    async def floors(keys: Sequence[str]) -> MemoryVersions:
        return await read_floors(runtime.kafka, versions_topic(settings), keys)

    fixed = await repair(channels, drift.drifted, current, floors, settings.projection, unseen_ok=False)
    unsettled.update(fixed.unsettled)
    log.info("reconcile repaired=%d left=%s failed=%d unsettled=%d", len(fixed.repaired),
             ",".join(f"{reason.value}:{count}" for reason, count in sorted(fixed.left.items())) or "-",
             len(fixed.failed), len(fixed.unsettled))


def _owned(runtime: Runtime) -> Callable[[bytes], bool]:
    """Whether a table key is in one of this worker's active partitions. The store may also hold
    standby partitions (and, between recoveries, revoked ones): their state may be behind."""
    topic = changelog_topic(runtime.settings, STATE_TABLE)
    actives = {tp.partition for tp in runtime.app.assignor.assigned_actives() if tp.topic == topic}
    partitions = runtime.settings.partitions
    return lambda key: expected_partition(key, partitions) in actives


def _stored(runtime: Runtime, customer_key: str) -> bytes | None:
    key = customer_key.encode()
    stored: bytes | None = runtime.table.get(key) if _owned(runtime)(key) else None
    return stored


def _sample(runtime: Runtime, size: int, also: set[str]) -> dict[str, tuple[bytes, CustomerState]]:
    owned = _owned(runtime)
    keys = [key for key in runtime.table if owned(key)]
    chosen = set(random.sample(keys, min(size, len(keys)))) | {key.encode() for key in also}
    sampled = {}
    for key in chosen:
        stored = runtime.table.get(key) if owned(key) else None
        state = decode_state(stored)
        if stored is not None and state is not None:
            sampled[state.customer_key] = (stored, state)
    return sampled
