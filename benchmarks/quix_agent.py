"""The same fold in Quix Streams: decode the event, `apply_event`, encode the state, per event.

Run by benchmarks/state_agent_throughput.py as `python benchmarks/quix_agent.py`, configured
through the same environment variables as a worker (needs the `bench` extra). State lives in
RocksDB with a changelog topic, as Quix keeps it by default; each event writes one record (the
customer's new state) to `<app id>-quix-out`, stamped when it is produced so the benchmark can
time the run from Kafka as it does for the two Faust agents.
"""

from __future__ import annotations

import os
import time
from typing import Any

from quixstreams import Application, State
from quixstreams.models.topics.admin import TopicAdmin, TopicConfig
from quixstreams.state.rocksdb import RocksDBOptions
from quixstreams.utils import json as quix_json

from streams.codec import decode_event, decode_state, encode_state
from streams.reducer import apply_event


def _inspect_topics_without_describe_configs(
    self: TopicAdmin, topic_names: list[str], timeout: float = 30
) -> dict[str, TopicConfig | None]:
    """Benchmark-only patch: the embedded Tansu broker answers DescribeConfigs with nothing, so
    Quix's topic check (partitions, replicas, configs) would wait for it; partitions and replicas
    come from the metadata, and retention is taken as unlimited (returns.events is kept forever)."""
    cluster = self.list_topics(timeout=timeout)
    return {
        name: TopicConfig(
            num_partitions=len(cluster[name].partitions),
            replication_factor=len(cluster[name].partitions[0].replicas) or 1,
            extra_config={"retention.ms": "-1", "retention.bytes": "-1"},
        ) if name in cluster else None
        for name in topic_names
    }


def _bytes_as_they_are(value: Any) -> bytes:
    return value if isinstance(value, bytes) else quix_json.dumps(value)


def fold(value: bytes, state: State) -> bytes:
    stored = state.get("customer")
    encoded = encode_state(apply_event(decode_state(stored), decode_event(value)).state)
    state.set("customer", encoded)
    return encoded


def produced_now(value: Any, key: Any, timestamp: int, headers: Any) -> int:
    # Quix forwards the input's timestamp by default; the benchmark times when each is written.
    return time.time_ns() // 1_000_000


def main() -> None:
    TopicAdmin.inspect_topics = _inspect_topics_without_describe_configs  # type: ignore[method-assign]
    app_id = os.environ["RETURNSYNC_APP_ID"]
    app = Application(
        broker_address=os.environ["KAFKA_BOOTSTRAP_SERVERS"],
        consumer_group=app_id,
        auto_offset_reset="earliest",
        state_dir=os.path.join(os.environ["RETURNSYNC_DATA_DIR"], "quix-state"),
        # The state is stored as encode_state's bytes: no second serialization on top of it.
        # (Quix serializes its state keys with the same function: those still go through JSON.)
        rocksdb_options=RocksDBOptions(dumps=_bytes_as_they_are, loads=lambda value: value),
        use_changelog_topics=True,
        processing_guarantee="at-least-once",
        loglevel=os.environ.get("RETURNSYNC_LOG_LEVEL", "WARNING").upper(),
    )
    source = app.topic(os.environ["RETURNSYNC_TOPIC_PREFIX"] + "returns.events",
                       key_deserializer="bytes", value_deserializer="bytes")
    out = app.topic(f"{app_id}-quix-out", key_serializer="bytes", value_serializer="bytes")
    frame = app.dataframe(source)
    frame = frame.apply(fold, stateful=True).set_timestamp(produced_now)
    frame.to_topic(out)
    app.run()


if __name__ == "__main__":
    main()
