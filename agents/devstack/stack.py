"""`returnsync dev`: the whole product on one machine, with nothing to install or configure.

Embedded broker, Klaviyo sandbox, one worker, a few hundred demo customers' return lifecycles;
then a live status line until Ctrl-C, and an orderly stop of everything it started.

The status line comes from the worker's own /metrics, scraped once a second: running totals,
rates over the last few seconds, lag and backlog. On a terminal it rewrites itself in place;
otherwise (a pipe, a log file, CI) it is printed as a plain line every STATUS_EVERY seconds and
once more when the demo traffic is all in Klaviyo.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import TextIO

import httpx
from prometheus_client.parser import text_string_to_metric_families

from agents.commands.publish import event_records, publish_records
from agents.devstack.broker import EmbeddedBroker
from agents.devstack.processes import ChildProcess, worker_env
from agents.settings import Settings
from streams.demo import demo_events

SANDBOX_KEY = "sandbox-key"
RATE_WINDOW = 5.0  # seconds the status line's rates are measured over
STATUS_EVERY = 10.0  # seconds between plain status lines when stderr is not a terminal
COUNTERS = ("ingested", "delivered", "webhooks", "klaviyo_requests", "dead_letters")

# What the status line reads from /metrics: family (counters without `_total`) -> (key, how
# the per-partition / per-label samples combine).
_WANTED: dict[str, tuple[str, Callable[[Iterable[float]], float]]] = {
    "returnsync_events_ingested": ("ingested", sum),
    "returnsync_events_delivered": ("delivered", sum),
    "returnsync_webhooks_received": ("webhooks", sum),
    "returnsync_klaviyo_requests": ("klaviyo_requests", sum),
    "returnsync_deadletters": ("dead_letters", sum),
    "returnsync_sync_backlog": ("backlog", sum),
    "returnsync_consumer_lag_messages": ("lag", sum),
    "returnsync_consumer_lag_seconds": ("lag_seconds", lambda values: max(values, default=0.0)),
}

Sample = tuple[float, Mapping[str, float]]  # (time.monotonic(), totals from one scrape)


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
    # One request a second for the status line: httpx's per-request INFO lines would bury it.
    logging.getLogger("httpx").setLevel(logging.WARNING)
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
        example = events[0].customer.email
        metrics_url = f"http://127.0.0.1:{web_port}/metrics"
        samples: deque[Sample] = deque(maxlen=64)
        _sample(metrics_url, samples)  # before the demo traffic: the first rates cover publishing
        tty = sys.stderr.isatty()
        nl = "\n" if tty else ""
        say(f"demo traffic    {len(events)} events for {customers} customers")
        asyncio.run(publish_records(settings.kafka(bootstrap), settings.topics.events, event_records(events),
                                    progress=True))
        synced = False
        last_plain = -math.inf
        # From here Ctrl-C ends the status loop; the ExitStack then stops what was started.
        stopping = _stop_on_signals()
        while not stopping():
            totals = _sample(metrics_url, samples)
            line = status_line(totals, rates(samples))
            now_synced = not synced and totals.get("delivered", 0) >= len(events)
            if tty:
                # Never wider than the terminal: a wrapped line would not rewrite in place.
                width = _terminal_width(sys.stderr)
                sys.stderr.write("\r" + fit(line, width - 1) + "\x1b[K")
            elif now_synced or time.monotonic() - last_plain >= STATUS_EVERY:
                sys.stderr.write(line + "\n")
                last_plain = time.monotonic()
            sys.stderr.flush()
            if now_synced:
                synced = True
                sys.stderr.write(nl)
                say(_where_to_look(web_port, klaviyo_url, example))
                if exit_when_synced:
                    break
            if not worker.running:
                say(f"{nl}worker stopped unexpectedly:\n{worker.log_tail()}")
                return 1
            time.sleep(1.0)
        say(f"{nl}stopping: worker, sandbox, broker")
    return 0


def _sample(url: str, samples: deque[Sample]) -> dict[str, float]:
    """Scrape once; a scrape that answered joins `samples`. Empty when the worker did not answer."""
    totals = _status(url)
    if totals:
        samples.append((time.monotonic(), totals))
    return totals


def _status(url: str) -> dict[str, float]:
    try:
        text = httpx.get(url, timeout=2.0).text
    except httpx.HTTPError:
        return {}
    return totals_from_metrics(text)


def totals_from_metrics(text: str) -> dict[str, float]:
    """The status line's totals from a Prometheus text exposition (a worker's /metrics)."""
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        wanted = _WANTED.get(family.name)
        if wanted:
            key, combine = wanted
            totals[key] = combine(s.value for s in family.samples if not s.name.endswith("_created"))
    return totals


def rates(
    samples: Sequence[Sample], window: float = RATE_WINDOW, counters: Iterable[str] = COUNTERS
) -> dict[str, float]:
    """Per-second increase of each counter over the last `window` seconds of scrapes.

    The newest sample is compared with the newest one at least `window` seconds older, or with
    the oldest there is while the history is shorter. A counter that went down started again
    from zero (the worker restarted), so its whole new value is the increase. Fewer than two
    samples, or none apart in time, give no rates; a counter missing from either sample has none.
    """
    if len(samples) < 2:
        return {}
    *earlier, (now, newest) = samples
    then, oldest = next(((t, totals) for t, totals in reversed(earlier) if t <= now - window), earlier[0])
    span = now - then
    if span <= 0:
        return {}
    per_second = {}
    for key in counters:
        if key in newest and key in oldest:
            increase = newest[key] - oldest[key]
            per_second[key] = (newest[key] if increase < 0 else increase) / span
    return per_second


def status_line(totals: Mapping[str, float], per_second: Mapping[str, float]) -> str:
    """One compact line: totals with their rates, lag (messages, oldest in seconds), backlog.

    A rate not known yet (one scrape so far) shows as "-/s".
    """
    if not totals:
        return "waiting for the worker's metrics ..."

    def total(key: str) -> str:
        return f"{totals.get(key, 0):.0f}"

    def rate(key: str, unit: str = "/s") -> str:
        value = per_second.get(key)
        if value is None:
            return f"-{unit}"
        return f"{value:.1f}{unit}" if value < 10 else f"{value:.0f}{unit}"

    # Most important first: a narrow terminal drops fields from the right (see fit).
    return (f"ingested {total('ingested')} ({rate('ingested')})  "
            f"delivered {total('delivered')} ({rate('delivered')})  "
            f"lag {total('lag')} ({totals.get('lag_seconds', 0):.1f}s)  backlog {total('backlog')}  "
            f"dead letters {total('dead_letters')}  "
            f"webhooks {rate('webhooks')}  klaviyo {rate('klaviyo_requests', ' req/s')}")


def fit(line: str, width: int) -> str:
    """`line` cut to at most `width` characters at a field boundary (two spaces), never inside a
    number: a truncated "backlog 1" for "backlog 1234" would mislead. Drops fields from the right."""
    while len(line) > width and "  " in line:
        line = line.rsplit("  ", 1)[0]
    return line[:width]


def _terminal_width(stream: TextIO) -> int:
    """Columns of the terminal `stream` writes to; 120 when it does not say (0 under `script`)."""
    try:
        columns = os.get_terminal_size(stream.fileno()).columns
    except (OSError, ValueError):
        columns = 0
    return columns if columns > 0 else 120


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
