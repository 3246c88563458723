"""The Faust app: topics, the customer_returns table, and the processors wired onto them.

Built by a factory rather than at import time, so each worker and each test gets its own app id,
consumer group and changelog topics. The one module that imports every processor; they import
only agents.worker.runtime, never this.
"""

from __future__ import annotations

from typing import Any

import faust

from agents import metrics
from agents.kafka import KafkaConnection
from agents.settings import Settings
from agents.topic_plan import STATE_TABLE, rekey_topic, shopify_join_topic, sync_topic
from agents.worker import deliver, faust_fixes, fold, lag, normalize, scheduled_reconcile, views
from agents.worker.runtime import Runtime


def build_app(settings: Settings, kafka: KafkaConnection, *, broker_is_tansu: bool = False) -> Runtime:
    """`broker_is_tansu`: apply the embedded broker's workarounds (agents/worker/faust_fixes.py)."""
    session = settings.session_timeout
    app = faust.App(
        settings.app_id,
        **kafka.faust_options(),
        store=settings.store,
        datadir=str(settings.data_dir),
        autodiscover=False,
        key_serializer="raw",
        value_serializer="raw",
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        table_standby_replicas=settings.standby_replicas,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=session,
        broker_heartbeat_interval=max(0.5, min(3.0, session / 4)),
        broker_rebalance_timeout=session,
        producer_acks=-1,
        # Each event writes two records (changelog, sync record) of a few KB: with Faust's default
        # of no linger and 16 KB batches the producer sent a request every few records, and those
        # socket writes were a fifth of the worker's time. 10 ms of linger and 512 KiB batches
        # (under a broker's default 1 MB message.max.bytes) made the state agent 30-70% faster.
        producer_linger=0.010,
        producer_max_batch_size=512 * 1024,
        producer_max_request_size=settings.max_record_bytes,
        web_enabled=True,
        # Faust's own /table pages answer without the customers token: /table/<table>/<key> served a
        # customer's whole state to anyone. /router/ (which worker owns which partition) stays.
        web_tables_enabled=False,
        web_stats_enabled=False,
        web_graph_enabled=False,
        web_bind=settings.web_host,
        web_port=settings.web_port,
        # What the other workers dial when they route a request for a key this worker owns.
        web_host=settings.web_advertised_host,
        canonical_url=settings.canonical_url,
    )
    faust_fixes.apply(app, kafka if broker_is_tansu else None)
    topics = settings.topics

    def topic(*names: str, internal: bool = False) -> Any:
        return app.topic(
            *names,
            key_serializer="raw",
            value_serializer="raw",
            partitions=settings.partitions,
            internal=internal,
        )

    runtime = Runtime(
        settings=settings,
        app=app,
        kafka=kafka,
        events=topic(topics.events, rekey_topic(settings)),
        rekey=topic(rekey_topic(settings), internal=True),
        sync=topic(sync_topic(settings), internal=True),
        deadletter=topic(topics.deadletter),
        raw=topic(topics.raw),
        table=app.Table(
            STATE_TABLE,
            default=None,
            partitions=settings.partitions,
            # Bytes in and out (the app's serializers are raw): keys read back from the
            # changelog during recovery must equal the keys written live.
            key_type=bytes,
            value_type=bytes,
        ),
    )
    metrics.preinitialise()
    fold.register(runtime)
    if settings.delivery_enabled:  # off: a state-only worker (benchmarks, delivery paused)
        deliver.register(runtime)
    views.register(runtime)
    normalize.register(runtime)
    # Every topic a Faust agent consumes and records progress for: state (events, re-key) and
    # normalize (raw, Shopify join). The sync topic is measured by its own consumer.
    lag.register(runtime, {topics.events, rekey_topic(settings), topics.raw, shopify_join_topic(settings)})
    scheduled_reconcile.register(runtime)
    return runtime
