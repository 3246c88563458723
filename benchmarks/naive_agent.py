"""The naive baseline: a Faust agent that parses each event and writes the table once per event.

Run by benchmarks/state_agent_throughput.py as `python benchmarks/naive_agent.py`, configured
through the same environment variables as a worker.
"""

from __future__ import annotations

import os

import faust
import orjson


def benchmark_app() -> faust.App:
    """A plain Faust app on the worker's environment (also benchmarks/floor_agent.py's)."""
    return faust.App(
        os.environ["RETURNSYNC_APP_ID"],
        broker=f"kafka://{os.environ['KAFKA_BOOTSTRAP_SERVERS']}",
        store="memory://",
        autodiscover=False,
        key_serializer="raw",
        value_serializer="raw",
        topic_partitions=int(os.environ["RETURNSYNC_PARTITIONS"]),
        table_standby_replicas=0,
        consumer_auto_offset_reset="earliest",
        web_port=int(os.environ["RETURNSYNC_WEB_PORT"]),
        web_bind="127.0.0.1",
        broker_session_timeout=10.0,
    )


def run(app: faust.App) -> None:
    from faust.worker import Worker

    Worker(
        app, loglevel=os.environ.get("RETURNSYNC_LOG_LEVEL", "WARNING").upper(), quiet=True
    ).execute_from_commandline()


def main() -> None:
    app = benchmark_app()
    topic = app.topic(os.environ["RETURNSYNC_TOPIC_PREFIX"] + "returns.events")
    table = app.Table("naive", default=None, key_type=bytes, value_type=bytes)

    @app.agent(topic, name="naive")
    async def naive(stream):  # type: ignore[no-untyped-def]
        async for event in stream.events():
            parsed = orjson.loads(event.value)
            table[event.key] = orjson.dumps({"last": parsed["event_id"]})

    run(app)


if __name__ == "__main__":
    main()
