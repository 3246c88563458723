"""The floor of any Faust agent: iterate the stream and do nothing with the events.

Run by benchmarks/state_agent_throughput.py as `python benchmarks/floor_agent.py`, configured
through the same environment variables as a worker, on the naive agent's app settings. What each
event costs here (fetch, Faust's conductor and stream, acknowledgement) every Faust agent pays
before its own work. So the benchmark can time it from Kafka like the others, it writes one small
record to `<app id>-floor-out` per EVERY events (1% of the work of one record per event).
"""

from __future__ import annotations

import os

from naive_agent import benchmark_app, run  # this script's folder is on sys.path

EVERY = 100


def main() -> None:
    app = benchmark_app()
    topic = app.topic(os.environ["RETURNSYNC_TOPIC_PREFIX"] + "returns.events")
    out = app.topic(f"{os.environ['RETURNSYNC_APP_ID']}-floor-out")

    @app.agent(topic, name="floor")
    async def floor(stream):  # type: ignore[no-untyped-def]
        seen = 0
        async for _event in stream.events():
            seen += 1
            if seen % EVERY == 0:
                await out.send(value=b"%d" % seen)

    run(app)


if __name__ == "__main__":
    main()
