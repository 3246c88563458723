"""`returnsync dev`: the whole product on one machine, with nothing to install or configure.

Embedded broker, Klaviyo sandbox, one worker, a few hundred demo customers' return lifecycles;
then a live status line until Ctrl-C, and an orderly stop of everything it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

import httpx
from prometheus_client.parser import text_string_to_metric_families

from agents.broker import EmbeddedBroker
from agents.processes import ChildProcess, worker_env
from agents.publish import event_records, publish_records
from agents.settings import Settings
from streams.demo import demo_events

SANDBOX_KEY = "sandbox-key"


def run_dev(
    settings: Settings, *, customers: int, exit_when_synced: bool, web_port: int, sandbox_port: int
) -> int:
    run_dir = Path(settings.data_dir) / "dev"
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        return _run(settings, customers, exit_when_synced, web_port, sandbox_port, run_dir)
    except KeyboardInterrupt:
        _say("\nstopped during start-up")
        return 130


def _run(
    settings: Settings, customers: int, exit_when_synced: bool, web_port: int, sandbox_port: int,
    run_dir: Path,
) -> int:
    say = _say
    with contextlib.ExitStack() as stack:
        if settings.kafka_bootstrap_servers:
            bootstrap = settings.kafka_bootstrap_servers
        else:
            bootstrap = stack.enter_context(EmbeddedBroker(log_file=run_dir / "broker.log")).bootstrap_servers
        say(f"broker          {bootstrap}")
        klaviyo_url, klaviyo_key = settings.klaviyo_base_url, settings.klaviyo_api_key
        if not klaviyo_key:
            klaviyo_url, klaviyo_key = f"http://127.0.0.1:{sandbox_port}", SANDBOX_KEY
            sandbox = stack.enter_context(ChildProcess(
                ["sandbox", "--port", str(sandbox_port)], {"KLAVIYO_API_KEY": SANDBOX_KEY},
                run_dir / "sandbox.log"))
            sandbox.wait_http(f"{klaviyo_url}/_sandbox/requests", within=30)
            say(f"klaviyo sandbox {klaviyo_url}")
        env = worker_env(bootstrap_servers=bootstrap, klaviyo_url=klaviyo_url, klaviyo_key=klaviyo_key,
                         app_id=f"returnsync-dev-{int(time.time())}", web_port=web_port,
                         data_dir=run_dir / "worker", partitions=settings.partitions)
        worker = stack.enter_context(ChildProcess(["worker"], env, run_dir / "worker.log"))
        say(f"worker          http://127.0.0.1:{web_port}  (log {run_dir / 'worker.log'})")
        worker.wait_http(f"http://127.0.0.1:{web_port}/ready", within=120)
        events = demo_events(customers)
        say(f"demo traffic    {len(events)} events for {customers} customers")
        asyncio.run(publish_records(bootstrap, settings.topics.events, event_records(events), progress=True))
        example = events[0].customer.email
        synced = False
        # From here Ctrl-C ends the status loop; the ExitStack then stops what was started.
        stopping = _stop_on_signals()
        while not stopping():
            status = _status(f"http://127.0.0.1:{web_port}/metrics")
            sys.stderr.write("\r" + _status_line(status) + " " * 4)
            sys.stderr.flush()
            if not synced and status.get("delivered", 0) >= len(events):
                synced = True
                sys.stderr.write("\n")
                say(_where_to_look(web_port, klaviyo_url, example))
                if exit_when_synced:
                    break
            if not worker.running:
                say(f"\nworker stopped unexpectedly:\n{worker.log_tail()}")
                return 1
            time.sleep(1.0)
        say("\nstopping: worker, sandbox, broker")
    return 0


def _status(url: str) -> dict[str, float]:
    try:
        text = httpx.get(url, timeout=2.0).text
    except httpx.HTTPError:
        return {}
    totals: dict[str, float] = {}
    wanted = {
        "returnsync_events_ingested": "ingested",
        "returnsync_events_delivered": "delivered",
        "returnsync_deadletters": "dead_letters",
        "returnsync_sync_backlog": "backlog",
        "returnsync_consumer_lag_messages": "lag",
        "returnsync_klaviyo_requests": "klaviyo_requests",
    }
    for family in text_string_to_metric_families(text):
        name = wanted.get(family.name)
        if name:
            totals[name] = sum(s.value for s in family.samples if not s.name.endswith("_created"))
    return totals


def _status_line(status: dict[str, float]) -> str:
    if not status:
        return "waiting for the worker's metrics ..."
    return (f"ingested {status.get('ingested', 0):>7.0f}  delivered {status.get('delivered', 0):>7.0f}  "
            f"lag {status.get('lag', 0):>6.0f}  backlog {status.get('backlog', 0):>5.0f}  "
            f"klaviyo requests {status.get('klaviyo_requests', 0):>7.0f}  "
            f"dead letters {status.get('dead_letters', 0):>4.0f}")


def _where_to_look(web_port: int, klaviyo_url: str, email: str) -> str:
    return (
        "all demo events are in Klaviyo. Where to look:\n"
        f"  a customer's state   curl http://127.0.0.1:{web_port}/customers/{email}\n"
        f"  sandbox profiles     curl '{klaviyo_url}/_sandbox/profiles'\n"
        f"  sandbox events       curl '{klaviyo_url}/_sandbox/events'\n"
        f"  metrics              curl http://127.0.0.1:{web_port}/metrics\n"
        "Ctrl-C stops everything."
    )


def _say(line: str) -> None:
    print(line, flush=True)


def _stop_on_signals() -> Callable[[], bool]:
    stop = {"requested": False}

    def handler(signum: int, frame: FrameType | None) -> None:
        stop["requested"] = True

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return lambda: stop["requested"]
