"""The topic plan on a live broker: `returnsync topics`, and a worker that refuses mismatched topics.

The embedded broker auto-creates topics with 4 partitions and no configs; these tests run at
PARTITIONS (6), so a topic left to auto-creation shows up as a mismatch.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import orjson

from agents.devstack.processes import worker_env
from agents.kafka import KafkaConnection
from agents.offsets import runs_tansu
from agents.topic_admin import apply_plan, ensure_topics
from agents.topic_plan import topic_plan
from tests.integration.conftest import PARTITIONS, planned_settings


def returnsync(args: list[str], env: dict[str, str], within: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agents.commands.cli", *args], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=within, check=False)


def test_topics_check_create_and_json_against_a_fresh_cluster(kafka: KafkaConnection, prefix: str) -> None:
    settings = planned_settings(prefix)
    env = {"KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers, "RETURNSYNC_APP_ID": settings.app_id,
           "RETURNSYNC_TOPIC_PREFIX": prefix, "RETURNSYNC_PARTITIONS": str(PARTITIONS)}
    planned = len(topic_plan(settings))
    missing = returnsync(["topics", "--check"], env)
    assert missing.returncode == 1, missing.stderr
    assert f"{planned} topic(s) do not match" in missing.stdout
    assert f"{prefix}returns.raw: missing" in missing.stdout
    created = returnsync(["topics", "--create"], env)
    assert created.returncode == 0, created.stderr
    assert f"cluster matches the plan (0 checked, created {planned})" in created.stdout
    checked = returnsync(["topics", "--check", "--json"], env)
    assert checked.returncode == 0, checked.stderr
    report = orjson.loads(checked.stdout)
    assert report["check"]["ok"] is True and len(report["check"]["matching"]) == planned
    assert {topic["name"] for topic in report["topics"]} == {spec.name for spec in topic_plan(settings)}
    # What the broker now holds is what the plan said, configs included (read back, not assumed).
    again = asyncio.run(apply_plan(kafka, topic_plan(settings), create=False))
    assert again.ok and not again.created and len(again.matching) == planned


def test_a_worker_refuses_mismatched_topics_with_one_message_listing_each_and_its_fix(
    kafka: KafkaConnection, prefix: str, tmp_path: Path,
) -> None:
    # As if left to auto-creation: the embedded broker's 4 partitions and no retention configs.
    auto_created = [f"{prefix}returns.events", f"{prefix}returnsync-klaviyo-sync-versions"]
    asyncio.run(ensure_topics(kafka, auto_created, 4))
    env = worker_env(bootstrap_servers=kafka.bootstrap_servers, klaviyo_url="http://127.0.0.1:9",
                     klaviyo_key="unused", app_id=f"{prefix}returnsync", web_port=1, data_dir=tmp_path,
                     partitions=PARTITIONS, extra={"RETURNSYNC_TOPIC_PREFIX": prefix})
    started = time.monotonic()
    refused = returnsync(["worker"], env)
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert time.monotonic() - started < 60
    message = refused.stderr
    assert "Traceback" not in message
    assert "2 topic(s) do not match returnsync's topic plan" in message
    lines = [line.strip() for line in message.splitlines()]
    events_line = next(line for line in lines if line.startswith(f"{prefix}returns.events:"))
    assert "4 partitions, needs 6" in events_line
    assert "retention.ms=the broker's default, needs -1" in events_line
    versions_line = next(line for line in lines if "klaviyo-sync-versions:" in line)
    assert "needs compact" in versions_line and "fix: recreate" in versions_line


def test_an_unreachable_cluster_is_one_line_and_a_quick_non_zero_exit(prefix: str) -> None:
    started = time.monotonic()
    result = returnsync(["topics", "--check"], {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"})
    assert result.returncode == 2 and time.monotonic() - started < 45
    ours = [line for line in result.stderr.splitlines() if line.startswith("returnsync topics:")]
    assert len(ours) == 1 and "cannot use Kafka at 127.0.0.1:1 (PLAINTEXT)" in ours[0]
    assert "Traceback" not in result.stderr


def test_the_embedded_broker_is_recognised_as_tansu(kafka: KafkaConnection) -> None:
    """Only there does the recovery workaround run (agents/worker/faust_fixes.py); Kafka reports
    another id."""
    assert asyncio.run(runs_tansu(kafka)) is True


def test_every_topic_a_worker_used_was_created_as_planned(
    start_worker: Callable[..., object], publish: Callable[..., None], kafka: KafkaConnection, prefix: str,
) -> None:
    """Nothing was left to auto-creation: the start_worker fixture checks this for every test too."""
    from streams.demo import demo_events

    start_worker()
    publish(demo_events(5, seed=3))
    report = asyncio.run(apply_plan(kafka, topic_plan(planned_settings(prefix)), create=False))
    assert report.ok, report.message()
