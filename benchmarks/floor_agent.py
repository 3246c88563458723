"""The floor of any Faust agent: iterate the stream and do nothing with the events.

Run by benchmarks/state_agent_throughput.py as `python benchmarks/floor_agent.py`,
configured through the same environment variables as a worker. What each event costs here
(fetch, Faust's conductor and stream, acknowledgement) every Faust agent pays before its own
work. So the benchmark can time it from Kafka like the others, it writes one small record to
`<app id>-floor-out` per EVERY events (1% of the work of one record per event).
"""

from __future__ import annotations

import os

import faust

EVERY = 100


def main() -> None:
    app = faust.App(
        os.environ["RETURNSYNC_APP_ID"],
        broker=f"kafka://{os.environ['KAFKA_BOOTSTRAP_SERVERS']}",
        store="memory://",
        autodiscover=False,
        key_serializer="raw",
        value_serializer="raw",
        topic_partitions=int(os.environ["RETURNSYNC_PARTITIONS"]),
        consumer_auto_offset_reset="earliest",
        web_port=int(os.environ["RETURNSYNC_WEB_PORT"]),
        web_bind="127.0.0.1",
        broker_session_timeout=10.0,
    )
    topic = app.topic(os.environ["RETURNSYNC_TOPIC_PREFIX"] + "returns.events")
    out = app.topic(f"{os.environ['RETURNSYNC_APP_ID']}-floor-out")

    @app.agent(topic, name="floor")
    async def floor(stream):  # type: ignore[no-untyped-def]
        seen = 0
        async for _event in stream.events():
            seen += 1
            if seen % EVERY == 0:
                await out.send(value=b"%d" % seen)

    from faust.worker import Worker

    Worker(
        app, loglevel=os.environ.get("RETURNSYNC_LOG_LEVEL", "WARNING").upper(), quiet=True
    ).execute_from_commandline()


if __name__ == "__main__":
    main()
