"""Partition ends as the workers read them: exact on any broker, even where ListOffsets is not.

Tansu answers ListOffsets(latest) with the last batch's base offset + 1; Faust's changelog
recovery and the version floors depend on the true end (agents/offsets.py, agents/worker/faust_fixes.py).
"""

from __future__ import annotations

import asyncio
import uuid

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from agents.kafka import KafkaConnection
from agents.offsets import fetched_ends


async def produce_batches(bootstrap_servers: str, topic: str, batches: int, per_batch: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers, linger_ms=20)
    await producer.start()
    try:
        for _ in range(batches):
            sent = [await producer.send(topic, b"x" * 50, partition=0) for _ in range(per_batch)]
            await producer.flush()
            await asyncio.gather(*sent)
    finally:
        await producer.stop()


async def listed_end(bootstrap_servers: str, tp: TopicPartition) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers)
    await consumer.start()
    try:
        end: int = (await consumer.end_offsets([tp]))[tp]
        return end
    finally:
        await consumer.stop()


def test_fetched_ends_are_the_true_ends_whatever_listoffsets_says(bootstrap_servers: str) -> None:
    topic = f"ends-{uuid.uuid4().hex[:8]}"
    tp, empty = TopicPartition(topic, 0), TopicPartition(topic, 1)

    async def run() -> tuple[int, dict[TopicPartition, int]]:
        await produce_batches(bootstrap_servers, topic, batches=3, per_batch=20)
        listed = await listed_end(bootstrap_servers, tp)
        return listed, await fetched_ends(KafkaConnection(bootstrap_servers), {tp: listed, empty: 0})

    listed, ends = asyncio.run(run())
    assert ends == {tp: 60, empty: 0}, f"ListOffsets said {listed}"
    assert listed <= 60
