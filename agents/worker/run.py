"""Run one worker: create or check every topic in the plan, build the app, hand the loop to Faust."""

from __future__ import annotations

import asyncio
import logging

from agents.kafka import KafkaConnection
from agents.logs import logging_config
from agents.offsets import runs_tansu
from agents.settings import Settings
from agents.topic_admin import ensure_plan
from agents.topic_plan import topic_plan
from agents.worker.app import build_app

log = logging.getLogger(__name__)


async def prepare_cluster(settings: Settings, kafka: KafkaConnection) -> bool:
    """Every planned topic exists as planned (raises TopicPlanError or KafkaUnreachable with one
    message otherwise), before anything subscribes. Returns whether the broker is Tansu."""
    await ensure_plan(kafka, topic_plan(settings))
    if settings.source_retention_ms is not None:
        log.warning("RETURNSYNC_SOURCE_RETENTION_MS=%d: returns.raw and returns.events forget older "
                    "records, so replay rebuilds Klaviyo from that window only", settings.source_retention_ms)
    tansu = await runs_tansu(kafka)
    if tansu:
        log.info("broker is Tansu: its ListOffsets workaround is on (agents/worker/faust_fixes.py)")
    return tansu


def run_worker(settings: Settings, kafka: KafkaConnection) -> None:
    import mode.loop

    # uvloop: a faster event loop for the same code; Faust supports it natively.
    mode.loop.use("uvloop")
    tansu = asyncio.run(prepare_cluster(settings, kafka))
    runtime = build_app(settings, kafka, broker_is_tansu=tansu)
    from faust.worker import Worker

    # Faust installs its own logging unless handed a config: ours keeps one format for the process.
    worker = Worker(runtime.app, loglevel=settings.log_level.upper(), quiet=True,
                    logging_config=logging_config(settings.log_format, settings.log_level))
    log.info("worker starting app_id=%s settings=%r", settings.app_id, settings)
    worker.execute_from_commandline()
