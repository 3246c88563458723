"""Version floors persisted on a compacted topic, so the next owner of a partition inherits them.

Topic `<app id>-klaviyo-sync-versions`, partitioned like the sync topic (same count, same
murmur2 key hashing), so sync partition p's floors live in versions partition p. Key: the
customer key, value `{"v": version, "job": id or null}`; key `job:<id>`, value `{"done": true}`
once a bulk import job is known to be finished. On assignment the sync consumer reads its
partitions of this topic before it delivers anything; compaction keeps one record per key.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Sequence

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.partitioner import murmur2

from agents.kafka import KafkaConnection
from agents.klaviyo.versions import Floor, MemoryVersions
from agents.offsets import partition_ends

log = logging.getLogger(__name__)
JOB_PREFIX = "job:"  # customer keys are "<tenant>/<email>" and tenants hold no ':'


class KafkaVersions(MemoryVersions):
    def __init__(self, kafka: KafkaConnection, topic: str, partitions: int) -> None:
        """The topic is created by the worker's topic plan (agents/topic_plan.py)."""
        super().__init__()
        self.topic = topic
        self._kafka = kafka
        self._partitions = partitions
        self._producer = AIOKafkaProducer(**kafka.client_options(), acks="all", linger_ms=2)
        self._jobs_by_partition: dict[int, set[str]] = {}

    async def start(self) -> None:
        await self._producer.start()

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await self._producer.stop()

    def partition(self, customer_key: str) -> int:
        partition: int = (murmur2(customer_key.encode()) & 0x7FFFFFFF) % self._partitions
        return partition

    async def record(self, marks: Sequence[tuple[str, Floor]]) -> None:
        await super().record(marks)
        sends = [
            await self._producer.send(
                self.topic, key=key.encode(), partition=self.partition(key),
                value=orjson.dumps({"v": floor.version, "job": floor.job}),
            )
            for key, floor in marks
        ]
        await asyncio.gather(*sends)

    async def completed(self, job_id: str, customer_keys: Iterable[str]) -> None:
        await super().completed(job_id, customer_keys)
        partitions = {self.partition(key) for key in customer_keys}
        key = f"{JOB_PREFIX}{job_id}".encode()
        sends = [await self._producer.send(self.topic, key=key, value=b'{"done":true}', partition=p)
                 for p in sorted(partitions)]
        await asyncio.gather(*sends)

    async def load(self, partitions: Iterable[int]) -> None:
        """Read these partitions' floors from the start; called on assignment, before delivery."""
        tps = [TopicPartition(self.topic, p) for p in sorted(set(partitions))]
        if not tps:
            return
        consumer = AIOKafkaConsumer(**self._kafka.client_options(), enable_auto_commit=False)
        await consumer.start()
        loaded = 0
        try:
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            ends = await consumer.end_offsets(tps)
            while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
                for tp, messages in (await consumer.getmany(*tps, timeout_ms=500)).items():
                    for message in messages:
                        self._apply(tp.partition, message.key, message.value)
                        loaded += 1
                # ListOffsets can fall a batch short on Tansu (agents/devstack/broker.py: partition_ends);
                # a fetch's highwater is exact, so the newest floors are never left unread.
                ends = partition_ends(ends, {tp: consumer.highwater(tp) for tp in tps})
        finally:
            await consumer.stop()
        log.info("version floors loaded partitions=%s records=%d", [tp.partition for tp in tps], loaded)

    def forget_partitions(self, partitions: Iterable[int]) -> None:
        """The partitions went to another worker: their floors are its to keep now."""
        gone = set(partitions)
        super().forget([key for key in list(self._floors) if self.partition(key) in gone])
        for partition in gone:
            self._complete -= self._jobs_by_partition.pop(partition, set())

    def _apply(self, partition: int, key: bytes | None, value: bytes | None) -> None:
        record = decode_record(key, value)
        if record is None:
            return
        customer_key, floor = record
        if floor is None:
            self.mark_complete(customer_key)
            self._jobs_by_partition.setdefault(partition, set()).add(customer_key)
        else:
            self.mark(customer_key, floor)


def decode_record(key: bytes | None, value: bytes | None) -> tuple[str, Floor | None] | None:
    """One record of the versions topic: (customer key, its floor), or (job id, None) for a bulk
    job known to be finished; None for a record without key or value."""
    if key is None or value is None:
        return None
    text = key.decode()
    if text.startswith(JOB_PREFIX):
        return text[len(JOB_PREFIX):], None
    data = orjson.loads(value)
    return text, Floor(int(data["v"]), data.get("job"))

