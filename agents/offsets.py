"""Where a partition ends, right on Apache Kafka and on Tansu (the embedded broker), and whether
the cluster is Tansu at all.

Tansu answers ListOffsets(latest) with the last batch's base offset + 1, a batch short. Lag, the
version floors, replay and (on Tansu only) Faust's changelog recovery take the larger of what
ListOffsets says and a fetch's highwater, which is right on both.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from agents.kafka import KafkaConnection, admin_client

TANSU_CLUSTER_ID = "tansu_cluster"


async def runs_tansu(kafka: KafkaConnection) -> bool:
    """Whether the cluster is a Tansu broker (the embedded one), whose ListOffsets answers a
    batch short: only then do the recovery and end-offset workarounds run (agents/worker/faust_fixes.py).
    Tansu reports its default cluster id; Apache Kafka and the managed services a random one."""
    async with admin_client(kafka) as admin:
        cluster = await admin.describe_cluster()
    return bool(cluster.get("cluster_id") == TANSU_CLUSTER_ID)


def partition_ends(listed: Mapping[Any, int | None], fetched: Mapping[Any, int | None]) -> dict[Any, int]:
    """Each partition's end: the larger of what ListOffsets said and the last fetch's highwater.

    Neither can be past the true end. ListOffsets is current but Tansu (the embedded broker)
    answers it with the last batch's base offset + 1, short of the end by that batch; a fetch's
    highwater is exact but stops moving when the consumer stops fetching. The larger is right on
    Kafka and at most one batch short on Tansu, never frozen and never zero while records wait.
    """
    ends: dict[Any, int] = {}
    for tp in {*listed, *fetched}:
        known = [end for end in (listed.get(tp), fetched.get(tp)) if end is not None]
        if known:
            ends[tp] = max(known)
    return ends


async def fetched_ends(kafka: KafkaConnection, listed: Mapping[Any, int]) -> dict[Any, int]:
    """The end of each partition as a fetch sees it, given the ends ListOffsets listed.

    One small fetch at the listed end - 1 per non-empty partition returns the exact highwater
    (see partition_ends). Partitions keep their listed end if the fetch says nothing in time.
    """
    probed = {tp: end for tp, end in listed.items() if end > 0}
    ends = dict(listed)
    if not probed:
        return ends
    partitions = {TopicPartition(tp.topic, tp.partition): tp for tp in probed}
    consumer = AIOKafkaConsumer(**kafka.client_options(), enable_auto_commit=False,
                                max_partition_fetch_bytes=64 * 1024, fetch_max_wait_ms=100)
    await consumer.start()
    try:
        consumer.assign(list(partitions))
        for kafka_tp, tp in partitions.items():
            consumer.seek(kafka_tp, probed[tp] - 1)
        deadline = time.monotonic() + 10
        waiting = set(partitions)
        while waiting and time.monotonic() < deadline:
            await consumer.getmany(*waiting, timeout_ms=200)
            for kafka_tp in list(waiting):
                highwater = consumer.highwater(kafka_tp)
                if highwater is not None:
                    tp = partitions[kafka_tp]
                    ends[tp] = max(highwater, probed[tp])
                    waiting.discard(kafka_tp)
    finally:
        await consumer.stop()
    return ends


def capture_ends(consumer: AIOKafkaConsumer, tps: list[TopicPartition], listed: dict[TopicPartition, int],
                 ends: dict[TopicPartition, int], *, give_up: bool) -> None:
    """The end of each partition: the high watermark of its first fetch. ListOffsets alone is not
    trusted: the embedded broker (Tansu) answers it a batch short (partition_ends)."""
    for tp in tps:
        if tp in ends:
            continue
        highwater = consumer.highwater(tp)
        if highwater is not None:
            ends[tp] = max(highwater, listed[tp])
        elif give_up:
            ends[tp] = listed[tp]
