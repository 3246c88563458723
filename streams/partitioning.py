"""Which partition a key lands in: Kafka's default partitioner (murmur2), as producers use it.

State is partitioned by customer key, so the fold, the Shopify join, the versions topic and
the routing of `GET /customers/{email}` all ask this one function.
"""

from __future__ import annotations

from functools import lru_cache

from aiokafka.partitioner import murmur2


@lru_cache(maxsize=65_536)  # murmur2 is pure Python; a customer's events repeat its key
def expected_partition(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner (murmur2) puts this key in."""
    partition: int = (murmur2(key) & 0x7FFFFFFF) % partitions
    return partition
