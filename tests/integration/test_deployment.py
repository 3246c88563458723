"""A deployment-shaped run: three worker processes, a crash and a rolling restart under load.

Three `returnsync worker` processes in one group, at the product's default partition count (8) on
a broker that auto-creates topics with another (the embedded Tansu broker: 4), so a topic left to
auto-creation cannot pass for a planned one. Signed webhooks from all five platforms come in
through `POST /webhooks/<source>` on all three workers, as a load balancer spreads them: whole
return lifecycles of distinct customers, some webhooks sent twice, Shopify returns before their
order. Under that load one worker is killed (SIGKILL) and started again as a supervisor would;
later all three are restarted one at a time (SIGTERM, start, /ready and delivering, next),
webhooks still coming in.
A platform re-sends a webhook whose delivery failed (connection refused, 5xx) and the balancer
picks the next worker, so nothing may be lost.

Klaviyo (the sandbox) must end exactly as one delivery of each webhook says: every profile, every
timeline event once and nothing else, nothing dead-lettered, every acknowledged webhook in
returns.raw, and every topic as planned. Timings (kill -9 to convergence and others) are printed,
not asserted: `pytest -s` shows them.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from agents.devstack.broker import free_port
from agents.devstack.processes import ChildProcess, worker_env
from agents.kafka import KafkaConnection, admin_client
from agents.settings import SOURCES_WITH_SECRETS, Settings
from agents.topic_admin import apply_plan
from agents.topic_plan import rekey_topic, sync_topic, topic_plan
from streams.events import ReturnEvent
from streams.projection import ProjectionConfig, klaviyo_events
from streams.raw import decode_raw
from streams.signatures import sign
from tests.integration.harness import (
    SANDBOX_KEY,
    Expected,
    SandboxThread,
    expected_klaviyo,
    profile_differences,
    wait_until,
)
from tests.integration.test_webhooks_shopify import own_ids
from tests.integration.webhook_support import (
    SECRET_ENV,
    SECRETS,
    Delivery,
    events_of,
    expected_events,
    fixture,
    read_all,
    unique_email,
)
from tests.streams.adapter_support import fixture_json

pytestmark = pytest.mark.integration

PARTITIONS = Settings().partitions
"""The product's default (8): the workers are started without RETURNSYNC_PARTITIONS."""
BROKER_AUTO_CREATE_PARTITIONS = 4
WORKERS = 3
CUSTOMERS_PER_PLATFORM = 20
LANES = 4
"""Concurrent senders; each owns a quarter of the customers and sends their webhooks in order."""
PHASES = (0.45, 0.20, 0.35)
"""Shares of every lane's webhooks: around the kill -9, after it, during the rolling restart."""
KILL_AT = 0.4
"""Share of the first phase acknowledged before the kill."""
CRASH_PACE, ROLLING_PACE = 0.15, 2.0
"""Seconds between one lane's webhooks while a worker is killed / while the fleet restarts."""
RETRY_WITHIN = 120.0
CONVERGE_WITHIN = 240.0

LOOP_FLOW = ("return_created", "return_updated_in_transit", "return_updated_delivered", "return_closed")
REDO_FLOW = ("return_created", "return_updated", "return_complete")
SWAP_FLOW = ("return_created", "return_processed")
AFTERSHIP_FLOW = ("return_submitted", "return_approved", "return_shipment_updated", "return_received",
                  "return_resolved")
SHOPIFY_FLOWS = (  # orders/create first, or after one or two of the returns webhooks
    ("orders_create", "returns_request", "returns_approve", "refunds_create", "returns_close"),
    ("returns_request", "orders_create", "returns_approve", "refunds_create", "returns_close"),
    ("returns_request", "returns_approve", "orders_create", "refunds_create", "returns_close"),
)


# -- the webhooks ------------------------------------------------------------------------------

def digits(count: int, rng: random.Random) -> str:
    return "".join(rng.choices("123456789", k=count))


def hex_id(count: int) -> str:
    return uuid.uuid4().hex[:count]


def lifecycle(source: str, n: int, rng: random.Random) -> list[Delivery]:
    """One customer's return on `source`, every id the fixtures carry replaced by its own."""
    email = unique_email(f"{source}{n}")
    if source == "loop":
        ids = {"Jane.Doe@Example.com": email, "6042537": digits(7, rng), "987654321": digits(9, rng),
               '"771"': f'"{digits(4, rng)}"'}
        return [fixture(source, name, ids) for name in LOOP_FLOW]
    if source == "redo":
        ids = {"customer@example.com": email, "664f65d4c5a4ca3eff4b4e4": hex_id(23),
               "587364902131": digits(12, rng)}
        return [fixture(source, name, ids) for name in REDO_FLOW]
    if source == "swap":
        ids = {"jane@example.com": email, "r_8f2c": f"r_{hex_id(8)}", "RMA-10231": f"RMA-{digits(6, rng)}"}
        return [fixture(source, name, ids) for name in SWAP_FLOW]
    if source == "aftership":
        ids = {"Alex.Kim@Example.com": email, "b3eedf69b7c0410d8975d4350c007705": hex_id(32)}
        ids |= {fixture_json(source, name)["id"]: hex_id(32) for name in AFTERSHIP_FLOW}  # event ids
        return [fixture(source, name, ids) for name in AFTERSHIP_FLOW]
    assert source == "shopify"
    ids = own_ids(email)
    return [fixture(source, name, ids) for name in SHOPIFY_FLOWS[n % len(SHOPIFY_FLOWS)]]


def with_a_resend(steps: list[Delivery], rng: random.Random) -> list[Delivery]:
    """The platform sends one of the webhooks again, later: the same bytes, the same ids."""
    again = rng.randrange(len(steps))
    at = rng.randrange(again + 1, len(steps) + 1)
    return [*steps[:at], steps[again], *steps[at:]]


def sent(delivery: Delivery) -> tuple[str, bytes]:
    source, body, _headers = delivery
    return source, body


def email_of(steps: list[Delivery]) -> str:
    events = expected_events(steps)
    assert events, f"a lifecycle that reaches Klaviyo: {[body[:80] for _, body, _ in steps]}"
    return events[0].customer.email


def lanes_of(customers: list[list[Delivery]]) -> list[list[Delivery]]:
    """Customers dealt to the lanes; a lane interleaves its customers' webhooks, each customer's
    in order, so every phase of the run carries part of most lifecycles."""
    lanes = []
    for lane in range(LANES):
        mine = customers[lane::LANES]
        lanes.append([step for round_ in itertools.zip_longest(*mine) for step in round_ if step is not None])
    return lanes


def split(lane: list[Delivery], shares: Sequence[float]) -> list[list[Delivery]]:
    bounds = [0, *(round(len(lane) * sum(shares[: i + 1])) for i in range(len(shares) - 1)), len(lane)]
    return [lane[start:end] for start, end in itertools.pairwise(bounds)]


# -- the senders ---------------------------------------------------------------------------------

@dataclass
class Sender:
    """POSTs webhooks as a platform does, through a load balancer that rotates over every worker's
    port, running or not: a connection error or 5xx is retried (next port), a 4xx is a bug."""

    urls: list[str]
    acked: list[Delivery] = field(default_factory=list)
    failures: Counter[str] = field(default_factory=Counter)
    hurry: threading.Event = field(default_factory=threading.Event)
    stopped: threading.Event = field(default_factory=threading.Event)
    _turn: Iterator[int] = field(default_factory=itertools.count)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def lane(self, deliveries: Sequence[Delivery], pace: float) -> None:
        """Send in order, one every `pace` seconds until `hurry` is set, then as fast as acked."""
        with httpx.Client(timeout=15) as client:
            for delivery in deliveries:
                if self.stopped.is_set():
                    return
                self.send(client, delivery)
                self.hurry.wait(pace)

    def send(self, client: httpx.Client, delivery: Delivery) -> None:
        source, body, headers = delivery
        deadline = time.monotonic() + RETRY_WITHIN
        while True:
            with self._lock:
                url = self.urls[next(self._turn) % len(self.urls)]
            signed = {**headers, **sign(source, body, SECRETS[source])}
            try:
                response = client.post(f"{url}/webhooks/{source}", content=body, headers=signed)
            except httpx.HTTPError as error:
                why = type(error).__name__
            else:
                if response.status_code == 200:
                    with self._lock:
                        self.acked.append(delivery)
                    return
                assert response.status_code >= 500, (
                    f"{url} refused a signed {source} webhook: {response.status_code} {response.text}")
                why = str(response.status_code)
            with self._lock:
                self.failures[f"{url} {why}"] += 1
            assert time.monotonic() < deadline, f"no worker took a {source} webhook in {RETRY_WITHIN}s"
            if self.stopped.is_set():
                return
            threading.Event().wait(0.1)  # a platform backs off a little before it retries

    def failed_at(self, url: str) -> int:
        return sum(count for what, count in self.failures.items() if what.startswith(f"{url} "))

    def start(
        self, pool: ThreadPoolExecutor, lanes: Sequence[Sequence[Delivery]], pace: float,
    ) -> list[Future[None]]:
        self.hurry.clear()
        return [pool.submit(self.lane, lane, pace) for lane in lanes]

    def stop(self) -> None:
        """The test failed: the lanes give up (the pool's exit waits for them)."""
        self.stopped.set()
        self.hurry.set()

    def finish(self, running: list[Future[None]]) -> None:
        self.hurry.set()
        for future in running:
            future.result(timeout=RETRY_WITHIN * 2)


# -- the fleet -----------------------------------------------------------------------------------

@dataclass
class Fleet:
    """Three worker processes as a deployment runs them: own port and data dir each, secure
    (RETURNSYNC_DEV=0), the product's default partition count (RETURNSYNC_PARTITIONS unset), and
    otherwise worker_env's settings, as every integration test (session timeout 10 s, standby
    replicas 0, memory store)."""

    bootstrap_servers: str
    sandbox: SandboxThread
    prefix: str
    tmp: Path
    ports: list[int] = field(default_factory=lambda: [free_port() for _ in range(WORKERS)])
    workers: dict[int, ChildProcess] = field(default_factory=dict)
    launches: Counter[int] = field(default_factory=Counter)

    @property
    def urls(self) -> list[str]:
        return [self.url(index) for index in range(WORKERS)]

    def url(self, index: int) -> str:
        return f"http://127.0.0.1:{self.ports[index]}"

    def launch(self, index: int) -> ChildProcess:
        """Start worker `index` (again), without waiting; each start logs to its own file."""
        env = worker_env(
            bootstrap_servers=self.bootstrap_servers, klaviyo_url=self.sandbox.url, klaviyo_key=SANDBOX_KEY,
            app_id=f"{self.prefix}returnsync", web_port=self.ports[index],
            data_dir=self.tmp / f"worker-{index}",
            extra={"RETURNSYNC_TOPIC_PREFIX": self.prefix, "RETURNSYNC_DEV": "0", **SECRET_ENV},
        )
        self.launches[index] += 1
        worker = ChildProcess(["worker"], env, self.log(index, self.launches[index]))
        worker.env.pop("RETURNSYNC_PARTITIONS", None)
        self.workers[index] = worker.start()
        return worker

    def log(self, index: int, launch: int) -> Path:
        return self.tmp / f"worker-{index}.{launch}.log"

    def ready(self, index: int) -> bool:
        try:
            return httpx.get(f"{self.url(index)}/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_ready(self, index: int, within: float = 120) -> None:
        self.workers[index].wait_http(f"{self.url(index)}/ready", within=within)

    def sync_partitions(self, index: int) -> set[int]:
        """The Klaviyo sync topic's partitions worker `index` delivers (its sync lag gauges)."""
        try:
            text = httpx.get(f"{self.url(index)}/metrics", timeout=5).text
        except httpx.HTTPError:
            return set()
        topic = f'topic="{sync_topic(planned_settings(self.prefix))}"'
        return {int(match.group(1)) for line in text.splitlines()
                if line.startswith("returnsync_consumer_lag_messages{") and topic in line
                and (match := re.search(r'partition="(\d+)"', line))}

    def delivering(self) -> dict[int, set[int]] | None:
        """Every worker ready and delivering to Klaviyo, the sync partitions split between them."""
        if not all(self.ready(index) for index in range(WORKERS)):
            return None
        owned = {index: self.sync_partitions(index) for index in range(WORKERS)}
        if any(not partitions for partitions in owned.values()):
            return None
        every = [partition for partitions in owned.values() for partition in partitions]
        return owned if sorted(every) == list(range(PARTITIONS)) else None

    def wait_delivering(self, within: float = 120) -> None:
        """The gate of the rolling restart: /ready of the restarted worker, and the fleet's Klaviyo
        sync group settled with it. /ready answers once Faust's partitions are assigned, when the
        worker's own sync consumer is only starting to join its group; stopping the next worker
        then has the embedded broker (Tansu 0.6.0) keep the departed member as the group's
        leader, and the sync group never settles again: no Klaviyo delivery at all. Kafka does
        not do that; a deployment gating on delivery, as here, does not meet it."""
        try:
            wait_until(lambda: self.check() and self.delivering(), within=within, every=0.5,
                       what=f"{WORKERS} workers ready and splitting the sync partitions")
        except AssertionError as timeout:
            owned = {index: sorted(self.sync_partitions(index)) for index in range(WORKERS)}
            raise AssertionError(f"{timeout}; sync partitions now: {owned}; logs in {self.tmp}") from None

    def check(self) -> bool:
        """True; a worker that exited by itself (not killed or stopped here) fails the test."""
        for index, worker in self.workers.items():
            code = worker.process.returncode if worker.process else None
            assert worker.running, f"worker {index} exited by itself ({code}):\n{worker.log_tail(60)}"
        return True

    def kill(self, index: int) -> None:
        self.workers[index].kill()

    def stop(self, index: int, within: float = 30) -> int | None:
        """SIGTERM; the exit code (-9 when it had to be killed after `within` seconds)."""
        self.check()
        worker = self.workers[index]
        worker.stop(within=within)
        return worker.process.returncode if worker.process else None

    def stop_all(self) -> None:
        for worker in self.workers.values():
            worker.stop(within=20)


def planned_settings(prefix: str) -> Settings:
    return Settings(app_id=f"{prefix}returnsync", topic_prefix=prefix, partitions=PARTITIONS)


async def topic_layout(kafka: KafkaConnection, prefix: str) -> dict[str, int]:
    """Every topic of this test on the broker, with its partition count."""
    async with admin_client(kafka) as admin:
        names = [name for name in await admin.list_topics() if name.startswith(prefix)]
        described = await admin.describe_topics(names)
    return {topic["topic"]: len(topic["partitions"]) for topic in described}


async def topic_problems(kafka: KafkaConnection, prefix: str) -> list[str]:
    """Topics outside the plan, missing from it, or not as planned (partitions, configs)."""
    plan = topic_plan(planned_settings(prefix))
    report = await apply_plan(kafka, plan, create=False)
    planned = {spec.name for spec in plan}
    layout = await topic_layout(kafka, prefix)
    return ([f"{name}: not in the plan ({count} partitions)" for name, count in layout.items()
             if name not in planned]
            + [f"{name}: missing" for name in report.missing]
            + [f"{name}: {what}" for name, what, _fix in report.problems])


@pytest.fixture
def fleet(
    bootstrap_servers: str, sandbox: SandboxThread, prefix: str, tmp_path: Path, kafka: KafkaConnection,
) -> Iterator[Fleet]:
    running = Fleet(bootstrap_servers, sandbox, prefix, tmp_path)
    yield running
    running.stop_all()
    if running.workers:  # whatever the test did, no topic was left to the broker's auto-creation
        assert asyncio.run(topic_problems(kafka, prefix)) == []


# -- Klaviyo -------------------------------------------------------------------------------------

def klaviyo_gaps(expected: Expected, emails: set[str], sandbox: SandboxThread) -> list[str]:
    """How the sandbox differs from `expected` for these customers (empty: it is equal)."""
    got = events_of(sandbox, emails)
    gaps = [f"missing {key}" for key in sorted(expected.events - got)]
    gaps += [f"unexpected {key}" for key in sorted(got - expected.events)]
    profiles = sandbox.profiles()
    gaps += [f"{email}: a profile, expected none" for email in sorted(emails - set(expected.profiles))
             if email in profiles]
    return gaps + (profile_differences(expected, sandbox) if not gaps else [])


def converge(expected: Expected, events: list[ReturnEvent], emails: set[str], sandbox: SandboxThread,
             fleet: Fleet, what: str) -> None:
    """Wait until Klaviyo equals `expected` (made of `events`), failing at once should a worker exit
    meanwhile; on a time-out, say where the events behind each missing timeline entry got to."""
    try:
        wait_until(lambda: fleet.check() and not klaviyo_gaps(expected, emails, sandbox),
                   within=CONVERGE_WITHIN, every=0.5, what=what)
    except AssertionError as timeout:
        gaps = klaviyo_gaps(expected, emails, sandbox)
        missing = expected.events - events_of(sandbox, emails)
        try:
            where = "\n".join(trace(fleet, events, missing))
        except Exception as error:  # the broker may be part of the problem
            where = f"  (not traced: {error!r})"
        raise AssertionError(f"{timeout}: {len(gaps)} differences, first {gaps[:5]}; where the events of "
                             f"the missing entries are:\n{where}") from None


def trace(fleet: Fleet, events: list[ReturnEvent], missing: set[tuple[str, str, str, bool]]) -> list[str]:
    """For each missing timeline entry, where its event is: returns.events, the rekey topic, the
    sync topic (partition@offset; in the sync topic, how the reducer applied it); and how far the
    groups committed on each topic: together, which stage dropped it."""
    config = ProjectionConfig()
    event_of = {item.unique_id: event.event_id for event in events for item in klaviyo_events(event, config)}
    wanted = sorted({event_of.get(key[2], key[2]) for key in missing})
    settings = planned_settings(fleet.prefix)
    found: dict[str, list[str]] = {event_id: [] for event_id in wanted}
    sync = sync_topic(settings)
    for topic in (settings.topics.events, rekey_topic(settings), sync):
        for record in read_all(fleet.bootstrap_servers, topic):
            # A sync record carries the customer's whole state, which names earlier events too:
            # only the record's own event counts.
            own = orjson.loads(record.value)["event"]["event_id"] if topic == sync else None
            for event_id in wanted:
                if (own == event_id) if topic == sync else event_id.encode() in record.value:
                    applied = orjson.loads(record.value).get("applied", "") if topic == sync else ""
                    found[event_id].append(f"{topic.removeprefix(fleet.prefix)} "
                                           f"p{record.partition}@{record.offset} {applied}".rstrip())

    async def committed(group: str, topic: str) -> str:
        """The group's committed offset / the end offset, per partition of `topic`."""
        consumer = AIOKafkaConsumer(bootstrap_servers=fleet.bootstrap_servers, enable_auto_commit=False,
                                    group_id=group)
        await consumer.start()
        try:
            tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
            ends = await consumer.end_offsets(tps)
            return " ".join([f"p{tp.partition}:{await consumer.committed(tp)}/{ends[tp]}" for tp in tps])
        finally:
            await consumer.stop()

    progress = [(f"{settings.app_id}-klaviyo-sync", sync), (settings.app_id, settings.topics.events),
                (settings.app_id, rekey_topic(settings)), (settings.app_id, settings.topics.raw)]
    return [f"  {event_id}: {'; '.join(where) or 'in none of them'}" for event_id, where in found.items()] + [
        f"  group {group.removeprefix(fleet.prefix)} on {topic.removeprefix(fleet.prefix)}, committed/end: "
        f"{asyncio.run(committed(group, topic))}" for group, topic in progress] + [f"  logs in {fleet.tmp}"]


def event_sends(sandbox: SandboxThread) -> int:
    """Event items the workers POSTed to the sandbox, accepted or not (at-least-once shows here)."""
    counts = sandbox.admin("GET", "counts")["requests"]["items_by_endpoint"]
    return sum(items for route, items in counts.items() if "event" in route)


# -- the test ------------------------------------------------------------------------------------

def test_three_workers_lose_nothing_through_a_kill_and_a_rolling_restart(
    fleet: Fleet, sandbox: SandboxThread, kafka: KafkaConnection, bootstrap_servers: str, prefix: str,
) -> None:
    assert PARTITIONS != BROKER_AUTO_CREATE_PARTITIONS, "an auto-created topic must show as a mismatch"
    clock = Clock()
    rng = random.Random(9)
    customers = [with_a_resend(lifecycle(source, n, rng), rng)
                 for n in range(CUSTOMERS_PER_PLATFORM) for source in SOURCES_WITH_SECRETS]
    assert {source for steps in customers for source, _, _ in steps} == set(SOURCES_WITH_SECRETS)
    emails = {email_of(steps) for steps in customers}
    assert len(emails) == len(customers), "one customer per lifecycle"
    phases = [split(lane, PHASES) for lane in lanes_of(customers)]
    crash, after, rolling = ([lane[phase] for lane in phases] for phase in range(len(PHASES)))
    sent_by = [list(itertools.chain.from_iterable(lanes)) for lanes in (crash, after, rolling)]
    everything = [delivery for deliveries in sent_by for delivery in deliveries]
    clock.say(f"{WORKERS} workers, {PARTITIONS} partitions (the broker auto-creates "
              f"{BROKER_AUTO_CREATE_PARTITIONS}), {len(customers)} customers, {len(everything)} webhooks; "
              f"logs in {fleet.tmp}")

    for index in range(WORKERS):
        fleet.launch(index)
    fleet.wait_delivering(within=180)
    clock.say("all workers ready and delivering")
    sender = Sender(fleet.urls)
    victim = 1

    with ThreadPoolExecutor(LANES) as pool:
        try:
            # 1. kill -9 under load: webhooks coming in, Klaviyo deliveries under way.
            running = sender.start(pool, crash, CRASH_PACE)
            kill_after = int(len(sent_by[0]) * KILL_AT)
            wait_until(lambda: (len(sender.acked) >= kill_after and len(sandbox.events()) >= 20)
                       or all(future.done() for future in running), within=120, what="load before the kill")
            assert not all(future.done() for future in running), "the kill must land while webhooks come in"
            fleet.kill(victim)
            killed = clock.say(f"kill -9 worker {victim}: {len(sender.acked)} webhooks acknowledged, "
                               f"{len(sandbox.events())} events in Klaviyo")
            fleet.launch(victim)  # as a supervisor restarts a crashed process
            sender.finish(running)
            clock.say(f"first {len(sent_by[0])} webhooks acknowledged", since=killed)
            fleet.wait_ready(victim)
            clock.say(f"worker {victim} ready again", since=killed)
            crash_events = expected_events(sent_by[0])
            crash_expected = expected_klaviyo(crash_events)
            converge(crash_expected, crash_events, emails, sandbox, fleet, "Klaviyo after kill -9")
            clock.say(f"KILL -9 TO CONVERGENCE: Klaviyo equal to {len(crash_expected.events)} events, "
                      f"{len(crash_expected.profiles)} profiles", since=killed)
            refused_by_victim = sender.failed_at(fleet.url(victim))
            assert refused_by_victim, f"webhooks to the killed worker were re-sent: {sender.failures}"

            # 2. The rest, to all three.
            sender.finish(sender.start(pool, after, 0))
            clock.say(f"next {len(sent_by[1])} webhooks acknowledged")

            # 3. Rolling restart, one worker at a time, webhooks coming in throughout.
            running = sender.start(pool, rolling, ROLLING_PACE)
            codes = []
            for index in range(WORKERS):
                stopping = time.monotonic()
                codes.append(fleet.stop(index))
                stopped = clock.say(f"worker {index} stopped by SIGTERM, exit {codes[-1]}",
                                    since=stopping)
                fleet.launch(index)
                fleet.wait_ready(index)
                ready = clock.say(f"worker {index} ready again", since=stopped)
                fleet.wait_delivering()  # before the next stop: see Fleet.wait_delivering
                rolled = clock.say(f"worker {index} delivering; sync partitions {fleet.delivering()}",
                                   since=ready)
            sender.finish(running)
            clock.say(f"last {len(sent_by[2])} webhooks acknowledged")
        except BaseException:
            sender.stop()
            raise

    assert Counter(map(sent, sender.acked)) == Counter(map(sent, everything)), "each acknowledged once"
    events = expected_events(everything)
    expected = expected_klaviyo(events)
    assert set(expected.profiles) == emails
    converge(expected, events, emails, sandbox, fleet, "Klaviyo after the rolling restart")
    clock.say(f"ROLLING RESTART TO CONVERGENCE: Klaviyo equal to {len(expected.events)} events, "
              f"{len(expected.profiles)} profiles", since=rolled)

    # No timeline event twice: one stored event per (customer, metric, unique id), as many as expected.
    stored = [(e["email"], e["metric"], e["unique_id"]) for e in sandbox.events() if e["email"] in emails]
    assert [key for key, count in Counter(stored).items() if count > 1] == []
    assert len(stored) == len(expected.events)
    assert sandbox.admin("GET", "counts")["violations"] == 0, sandbox.admin("GET", "violations")
    # Nothing dead-lettered; every acknowledged webhook is in returns.raw, re-sends included.
    letters = [orjson.loads(r.value) for r in read_all(bootstrap_servers, prefix + "returns.deadletter")]
    assert letters == [], f"dead letters: {[(x['stage'], x['reason'], x['error']) for x in letters][:5]}"
    raw = Counter(decode_raw(r.value).body for r in read_all(bootstrap_servers, prefix + "returns.raw"))
    lost = Counter(body for _, body, _ in sender.acked) - raw
    assert not lost, f"{sum(lost.values())} acknowledged webhooks are not in returns.raw"
    # Every topic exists with the planned partitions and configs; none was auto-created.
    plan = topic_plan(planned_settings(prefix))
    assert asyncio.run(topic_layout(kafka, prefix)) == {spec.name: spec.partitions for spec in plan}
    assert asyncio.run(topic_problems(kafka, prefix)) == []
    assert all(code != -9 for code in codes), f"SIGTERM stops a worker by itself: exit codes {codes}"
    failures = dict(sorted(sender.failures.items()))
    clock.say(f"{len(stored)} timeline events once each ({event_sends(sandbox)} event items sent), "
              f"{sum(failures.values())} failed attempts re-sent: {failures}")


@dataclass
class Clock:
    """Milestones on stdout (`pytest -s`), seconds since the test began and since a given time."""

    began: float = field(default_factory=time.monotonic)

    def say(self, what: str, *, since: float | None = None) -> float:
        now = time.monotonic()
        took = f" {now - since:.1f}s after" if since is not None else ""
        print(f"[deployment {now - self.began:6.1f}s]{took} {what}", flush=True)
        return now
