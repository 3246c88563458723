"""Real parts for integration tests: a Kafka-protocol broker, the Klaviyo sandbox, workers.

The broker is, in order: `KAFKA_BOOTSTRAP_SERVERS` if set; a testcontainers Kafka when
`RETURNSYNC_TEST_BROKER=testcontainers` (needs a Docker engine); else the embedded Tansu broker.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agents.commands.publish import event_records, publish_records
from agents.devstack.broker import EmbeddedBroker, free_port
from agents.devstack.processes import ChildProcess, worker_env
from agents.kafka import KafkaConnection, admin_client
from agents.settings import Settings
from agents.topic_admin import apply_plan, ensure_plan
from agents.topic_plan import topic_plan
from streams.events import ReturnEvent
from tests.integration.harness import SANDBOX_KEY, SandboxThread

PARTITIONS = 6
"""Neither the embedded broker's auto-create default (4) nor Kafka's (1): a topic the worker did not
create as planned shows up as a partition mismatch, not as a passing test."""


@pytest.fixture(scope="session")
def bootstrap_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        yield external
        return
    if os.environ.get("RETURNSYNC_TEST_BROKER") == "testcontainers":
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer().with_kraft() as kafka:
            yield kafka.get_bootstrap_server()
        return
    log = tmp_path_factory.mktemp("broker") / "broker.log"
    with EmbeddedBroker(log_file=log) as broker:
        yield broker.bootstrap_servers


@pytest.fixture
def sandbox() -> Iterator[SandboxThread]:
    server = SandboxThread(rate_limit_scale=0).start()
    yield server
    server.stop()


@pytest.fixture
def kafka(bootstrap_servers: str) -> KafkaConnection:
    return KafkaConnection(bootstrap_servers)


def planned_settings(prefix: str) -> Settings:
    """What the test workers run with (worker_env), for their topic plan."""
    return Settings(app_id=f"{prefix}returnsync", topic_prefix=prefix, partitions=PARTITIONS)


@pytest.fixture
def create_topics(kafka: KafkaConnection, prefix: str) -> Callable[[], None]:
    """Create this test's topic plan, as an operator would before producers publish (idempotent)."""

    def create() -> None:
        asyncio.run(ensure_plan(kafka, topic_plan(planned_settings(prefix))))

    return create


@pytest.fixture
def prefix() -> str:
    """A fresh topic prefix and app id per test: no test sees another's data or group."""
    return f"t{uuid.uuid4().hex[:10]}."


WorkerFactory = Callable[..., ChildProcess]


async def unplanned_topics(kafka: KafkaConnection, prefix: str) -> list[str]:
    """This test's topics that are not in its plan, or not as planned (left to auto-creation)."""
    report = await apply_plan(kafka, topic_plan(planned_settings(prefix)), create=False)
    async with admin_client(kafka) as admin:
        names = {name for name in await admin.list_topics() if name.startswith(prefix)}
    planned = {spec.name for spec in topic_plan(planned_settings(prefix))}
    return [f"{name}: not in the plan" for name in sorted(names - planned)] + [
        f"{name}: {what}" for name, what, _fix in report.problems]


@pytest.fixture
def start_worker(
    bootstrap_servers: str, sandbox: SandboxThread, prefix: str, tmp_path: Path, kafka: KafkaConnection,
) -> Iterator[WorkerFactory]:
    started: list[ChildProcess] = []

    def start(*, index: int = 0, env: dict[str, str] | None = None, port: int | None = None) -> ChildProcess:
        web_port = port or free_port()
        child_env = worker_env(
            bootstrap_servers=bootstrap_servers, klaviyo_url=sandbox.url, klaviyo_key=SANDBOX_KEY,
            app_id=f"{prefix}returnsync", web_port=web_port, data_dir=tmp_path / f"worker-{index}",
            partitions=PARTITIONS, extra={"RETURNSYNC_TOPIC_PREFIX": prefix, **(env or {})},
        )
        worker = ChildProcess(["worker"], child_env, tmp_path / f"worker-{index}.log").start()
        worker.web_url = f"http://127.0.0.1:{web_port}"  # type: ignore[attr-defined]
        started.append(worker)
        worker.wait_http(f"{worker.web_url}/ready", within=90)  # type: ignore[attr-defined]
        return worker

    yield start
    for worker in started:
        worker.stop(within=20)
    if started:  # whatever the test did, no topic was left to the broker's auto-creation
        assert asyncio.run(unplanned_topics(kafka, prefix)) == []


@pytest.fixture
def publish(bootstrap_servers: str, prefix: str, create_topics: Callable[[], None]) -> Callable[..., None]:
    created: list[bool] = []

    def send(events: list[ReturnEvent] | None = None, *, raw: list[tuple[bytes | None, bytes]] | None = None,
             topic: str = "returns.events") -> None:
        records = event_records(events or []) + (raw or [])
        if not created:  # never leave a topic to the broker's auto-creation
            create_topics()
            created.append(True)
        asyncio.run(publish_records(bootstrap_servers, prefix + topic, records))

    return send


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test here talks to a real broker: `pytest -m "not integration"` is the fast tier."""
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.integration)
