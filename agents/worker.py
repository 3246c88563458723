"""Run one worker: create the topics it owns, build the app, hand the loop to Faust."""

from __future__ import annotations

import asyncio
import logging

from agents.app import build_app, owned_topics
from agents.broker import ensure_topics
from agents.settings import Settings

log = logging.getLogger(__name__)


def run_worker(settings: Settings, bootstrap_servers: str) -> None:
    import mode.loop

    # uvloop: a faster event loop for the same code; Faust supports it natively.
    mode.loop.use("uvloop")
    asyncio.run(
        ensure_topics(
            bootstrap_servers, owned_topics(settings), settings.partitions, settings.replication_factor
        )
    )
    runtime = build_app(settings, bootstrap_servers)
    from faust.worker import Worker

    worker = Worker(runtime.app, loglevel=settings.log_level.upper(), quiet=True)
    log.info("worker starting app_id=%s settings=%r", settings.app_id, settings)
    worker.execute_from_commandline()
