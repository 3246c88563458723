"""Webhook acknowledgement latency (p50/p99) and throughput of one worker, with baselines, in one run.

    .venv/bin/python benchmarks/webhook_ack_latency.py [--requests 1500] [--concurrency 1 8 32]

What a platform waits for on `POST /webhooks/loop`: read the body, verify the HMAC, append the
envelope to `returns.raw` and wait for the broker's acks=all acknowledgement, answer 200. Measured
at the client (aiohttp, keep-alive, N requests in flight), against two baselines at the same
concurrency in the same run, on the same broker:

- `GET /health` on the same worker: the HTTP stack and the worker's event loop, no broker.
- `aiokafka send_and_wait`: a bare producer (acks=all) appending the same envelope, no HTTP:
  the floor any acknowledged webhook pays.

The worker is the real one (`returnsync worker`, RETURNSYNC_DEV=0 so signatures are verified)
with its agents running: it normalizes and syncs what it acknowledges to a local Klaviyo sandbox
meanwhile, as in production. Loopback only, a bounded number of requests per case, Loop fixture
bodies (one return and one customer per request, so keys spread over the partitions), pre-signed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from tempfile import mkdtemp

import aiohttp
import httpx
from aiokafka import AIOKafkaProducer

from agents.devstack.broker import EmbeddedBroker, free_port
from agents.devstack.processes import ChildProcess, worker_env
from agents.kafka import KafkaConnection
from agents.topic_admin import ensure_topics
from streams.raw import RawWebhook, encode_raw
from streams.signatures import sign

PARTITIONS = 4
SECRET = "bench-loop-secret"
FIXTURE = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "loop" / "return_created.json"
WARMUP = 100


def loop_bodies(count: int) -> list[tuple[bytes, dict[str, str]]]:
    """Distinct signed Loop webhooks: the fixture with its own return id and customer each."""
    template = json.loads(FIXTURE.read_bytes())
    bodies = []
    for index in range(count):
        email = f"bench.{index}@example.com"
        detail = {**template["customer_detail"], "email": email}
        webhook = {**template, "id": str(7_000_000 + index), "customer": email, "customer_detail": detail}
        body = json.dumps(webhook, separators=(",", ":")).encode()
        bodies.append((body, {**sign("loop", body, SECRET), "Content-Type": "application/json"}))
    return bodies


Row = tuple[int, str, list[float], float, float | None]
"""(concurrency, case, latencies in s, wall time in s, server-side mean ack in s)"""


async def measure(
    call: Callable[[int], Awaitable[None]], requests: int, concurrency: int
) -> tuple[list[float], float]:
    """Latencies (s) of `requests` calls with `concurrency` in flight, and the wall time."""
    latencies: list[float] = []
    counter = iter(range(requests))

    async def lane() -> None:
        for index in counter:
            started = time.perf_counter()
            await call(index)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(concurrency)))
    return latencies, time.perf_counter() - started


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def metric_sums(session: aiohttp.ClientSession, url: str, *names: str) -> tuple[float, ...]:
    text = await (await session.get(f"{url}/metrics")).text()
    sums = dict.fromkeys(names, 0.0)
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in sums:
            sums[name] += float(line.rsplit(" ", 1)[1])
    return tuple(sums.values())


async def settle(session: aiohttp.ClientSession, url: str, within: float = 120) -> None:
    """Wait until the worker has worked off the previous case (nothing new reduced for a second,
    nothing waiting for Klaviyo), so each case starts from an idle worker."""
    names = ("returnsync_events_processed_total", "returnsync_sync_backlog")
    deadline, last = time.monotonic() + within, None
    while time.monotonic() < deadline:
        now = await metric_sums(session, url, *names)
        if now == last and now[1] == 0:
            return
        last = now
        await asyncio.sleep(1.0)
    raise SystemExit(f"the worker did not settle within {within:.0f}s")


async def server_ack_seconds(session: aiohttp.ClientSession, url: str) -> tuple[float, float]:
    """(sum, count) of the worker's own returnsync_webhook_ack_seconds for Loop."""
    text = await (await session.get(f"{url}/metrics")).text()
    values = {}
    for line in text.splitlines():
        for name in ("_sum", "_count"):
            if line.startswith(f'returnsync_webhook_ack_seconds{name}{{source="loop"}}'):
                values[name] = float(line.rsplit(" ", 1)[1])
    return values.get("_sum", 0.0), values.get("_count", 0.0)


async def run_cases(
    url: str, bootstrap: str, bench_topic: str, requests: int, levels: list[int]
) -> list[Row]:
    bodies = loop_bodies(WARMUP + requests * len(levels) + WARMUP * len(levels))
    envelope = encode_raw(RawWebhook("loop", datetime.now(UTC), {}, bodies[0][0]))
    used = iter(bodies)
    rows = []
    connector = aiohttp.TCPConnector(limit=max(levels))
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
    await producer.start()
    async with aiohttp.ClientSession(connector=connector) as session:

        async def health(_: int) -> None:
            async with session.get(f"{url}/health") as response:
                assert response.status == 200, response.status

        async def produce(index: int) -> None:
            await producer.send_and_wait(bench_topic, value=envelope, key=str(index).encode())

        async def webhook(_: int) -> None:
            body, headers = next(used)
            async with session.post(f"{url}/webhooks/loop", data=body, headers=headers) as response:
                assert response.status == 200, (response.status, await response.text())

        try:
            for concurrency in levels:
                for name, call in (("GET /health", health), ("aiokafka send_and_wait", produce),
                                   ("POST /webhooks/loop", webhook)):
                    await measure(call, WARMUP, concurrency)
                    await settle(session, url)
                    before = await server_ack_seconds(session, url)
                    latencies, wall = await measure(call, requests, concurrency)
                    after = await server_ack_seconds(session, url)
                    server = None
                    if name.startswith("POST"):
                        server = (after[0] - before[0]) / max(after[1] - before[1], 1)
                    rows.append((concurrency, name, latencies, wall, server))
        finally:
            await producer.stop()
    return rows


def report(rows: list[Row], requests: int, external: bool, delivery: bool) -> None:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or platform.machine())
    print(f"\nmachine: {os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, "
          f"{platform.system()} {platform.release()}, broker {'external' if external else 'embedded Tansu'}")
    body = len(loop_bodies(1)[0][0])
    print(f"load: {requests} requests per case after {WARMUP} warm-up, loopback, signed Loop body of "
          f"{body} bytes; 1 worker, {PARTITIONS} partitions, "
          f"Klaviyo delivery {'on' if delivery else 'off'}\n")
    header = (f"{'conc':>4}  {'case':<24}{'p50 ms':>8}{'p99 ms':>8}{'req/s':>8}"
              f"{'p50 vs produce':>16}{'p50 vs /health':>16}{'server mean ms':>16}")
    print(header)
    print("-" * len(header))
    baselines: dict[tuple[int, str], float] = {}
    for concurrency, name, latencies, wall, server in rows:
        p50, p99 = percentile(latencies, 0.50), percentile(latencies, 0.99)
        baselines[(concurrency, name)] = p50
        produce = baselines.get((concurrency, "aiokafka send_and_wait"), p50)
        health = baselines.get((concurrency, "GET /health"), p50)
        server_text = f"{server * 1000:>16.2f}" if server is not None else f"{'':>16}"
        print(f"{concurrency:>4}  {name:<24}{p50 * 1000:>8.2f}{p99 * 1000:>8.2f}{len(latencies) / wall:>8.0f}"
              f"{p50 / produce:>15.2f}x{p50 / health:>15.2f}x{server_text}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1500, help="measured requests per case (max 20000)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32], help="in-flight requests")
    parser.add_argument("--no-delivery", action="store_true",
                        help="run the worker without Klaviyo delivery (ingest and state only)")
    options = parser.parse_args()
    requests = max(100, min(options.requests, 20_000))
    levels = [max(1, min(level, 256)) for level in options.concurrency]
    logs = Path(mkdtemp(prefix="returnsync-bench-"))
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    broker = None if external else EmbeddedBroker(log_file=logs / "broker.log").start()
    bootstrap = external or broker.bootstrap_servers  # type: ignore[union-attr]
    prefix = f"bench{uuid.uuid4().hex[:8]}."
    sandbox_port, web_port = free_port(), free_port()
    sandbox = ChildProcess(["sandbox", "--port", str(sandbox_port), "--rate-limit-scale", "0"], {},
                           logs / "sandbox.log")
    env = worker_env(
        bootstrap_servers=bootstrap, klaviyo_url=f"http://127.0.0.1:{sandbox_port}",
        klaviyo_key="sandbox-key", app_id=f"{prefix}returnsync", web_port=web_port,
        data_dir=logs / "worker", partitions=PARTITIONS,
        extra={"RETURNSYNC_TOPIC_PREFIX": prefix, "RETURNSYNC_DEV": "0", "LOOP_WEBHOOK_SECRET": SECRET,
               "RETURNSYNC_LOG_LEVEL": "warning",
               **({"RETURNSYNC_DELIVERY_ENABLED": "0"} if options.no_delivery else {})},
    )
    url = f"http://127.0.0.1:{web_port}"
    try:
        asyncio.run(ensure_topics(KafkaConnection(bootstrap), [prefix + "bench.produce"], PARTITIONS))
        with sandbox, ChildProcess(["worker"], env, logs / "worker.log") as worker:
            sandbox.wait_http(f"http://127.0.0.1:{sandbox_port}/_sandbox/profiles")
            worker.wait_http(f"{url}/ready", within=120)
            assert httpx.get(f"{url}/health").status_code == 200
            rows = asyncio.run(run_cases(url, bootstrap, prefix + "bench.produce", requests, levels))
        report(rows, requests, bool(external), not options.no_delivery)
        print(f"\nlogs: {logs}")
    finally:
        if broker is not None:
            broker.stop()


if __name__ == "__main__":
    main()
