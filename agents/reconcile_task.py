"""Scheduled reconcile inside the worker (RETURNSYNC_RECONCILE_INTERVAL seconds; 0 is off).

The worker's own table is the derived state of its partitions, so a sample of it is compared
with Klaviyo directly, without reading the topic. A customer whose state is still on its way to
Klaviyo would look drifted: drifted customers are checked again after a grace period, and only
those whose state did not change meanwhile and still differ count (and are repaired if asked).
"""

from __future__ import annotations

import asyncio
import logging
import random

from agents import metrics
from agents.app import Runtime
from agents.klaviyo.channels import Channels
from agents.klaviyo.client import KlaviyoError
from agents.reconcile import compare, repair
from agents.state_agent import load_state
from streams.state import CustomerState

log = logging.getLogger(__name__)


def register(runtime: Runtime) -> None:
    settings = runtime.settings
    if settings.reconcile_interval <= 0:
        return
    grace = max(5.0, 4 * settings.sync_batch_seconds)

    @runtime.app.timer(interval=settings.reconcile_interval)  # type: ignore[untyped-decorator]
    async def reconcile_sample() -> None:
        from agents.web_views import is_ready

        if not is_ready(runtime):
            return
        sampled = _sample(runtime, settings.reconcile_sample)
        if not sampled:
            metrics.RECONCILE_DRIFT_PROFILES.set(0)
            return
        channels = Channels.from_settings(settings)
        try:
            drift = await compare(channels, {key: state for key, (_, state) in sampled.items()},
                                  settings.projection)
            if drift.drifted:
                await asyncio.sleep(grace)
                settled = {key: sampled[key][1] for key in drift.drifted
                           if runtime.table.get(key.encode()) == sampled[key][0]}
                drift = await compare(channels, settled, settings.projection) if settled else drift
                if not settled:
                    metrics.RECONCILE_DRIFT_PROFILES.set(0)
            log.info("reconcile compared=%d drifted=%d", drift.compared, len(drift.drifted))
            if drift.drifted and settings.reconcile_repair:
                await repair(channels, [sampled[key][1] for key in drift.drifted], settings.projection)
                log.info("reconcile repaired=%d", len(drift.drifted))
        except KlaviyoError as exc:
            log.warning("reconcile could not read Klaviyo: %s", exc)
        finally:
            await channels.aclose()


def _sample(runtime: Runtime, size: int) -> dict[str, tuple[bytes, CustomerState]]:
    keys = list(runtime.table.keys())
    chosen = random.sample(keys, min(size, len(keys)))
    sampled = {}
    for key in chosen:
        stored = runtime.table.get(key)
        state = load_state(stored)
        if stored is not None and state is not None:
            sampled[state.customer_key] = (stored, state)
    return sampled
