"""Producing to returnsync's topics: demo traffic, files, backfills, tests and benchmarks."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Sequence

from aiokafka import AIOKafkaProducer

from agents.kafka import KafkaConnection
from streams.codec import encode_event
from streams.events import ReturnEvent

Record = tuple[bytes | None, bytes]


async def publish_records(
    kafka: KafkaConnection | str, topic: str, records: Sequence[Record], *, progress: bool = False
) -> int:
    """Send (key, value) pairs with acks=all and wait for every acknowledgement. A plain string
    is a plaintext cluster's bootstrap servers (tests, benchmarks)."""
    if isinstance(kafka, str):
        kafka = KafkaConnection(kafka)
    producer = AIOKafkaProducer(**kafka.client_options(), acks="all", linger_ms=5, max_batch_size=256 * 1024)
    await producer.start()
    try:
        started, pending = time.monotonic(), []
        for index, (key, value) in enumerate(records, 1):
            pending.append(await producer.send(topic, value=value, key=key))
            if len(pending) >= 1000 or index == len(records):
                for future in pending:
                    await future
                pending.clear()
                if progress:
                    progress_bar(index, len(records), started)
        if progress and records:
            sys.stderr.write("\n")
        return len(records)
    finally:
        await producer.stop()


def event_records(events: Iterable[ReturnEvent]) -> list[Record]:
    """Canonical events keyed by customer key, as producers should key them."""
    return [(event.customer_key.encode(), encode_event(event)) for event in events]


def progress_bar(done: int, total: int, started: float) -> None:
    elapsed = max(time.monotonic() - started, 1e-6)
    rate = done / elapsed
    eta = (total - done) / rate if rate else 0.0
    width = 30
    filled = int(width * done / total) if total else width
    sys.stderr.write(
        f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {rate:,.0f}/s eta {eta:4.0f}s"
    )
    sys.stderr.flush()
