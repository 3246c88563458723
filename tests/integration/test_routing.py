"""Two workers in one group: GET /customers/{email} answers the same on either worker, because
Faust proxies it to the worker that owns the customer's partition through that worker's
advertised URL (RETURNSYNC_ADVERTISED_HOST), not its bind address."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

from agents.topic_plan import STATE_TABLE as TABLE_NAME
from streams.demo import demo_events
from streams.partitioning import expected_partition
from streams.state import state_to_dict
from tests.integration.conftest import PARTITIONS, WorkerFactory
from tests.integration.harness import SandboxThread, expected_klaviyo, wait_until

# Bound to 127.0.0.1 (the harness) but advertised by name: were the bind address still what
# Faust publishes, the routing table below would say 127.0.0.1.
ADVERTISED = "localhost"


def changelog_owners(url: str) -> dict[str, set[int]]:
    """Faust's routing table as this worker sees it: advertised URL -> customer table partitions."""
    try:
        response = httpx.get(f"{url}/router/", timeout=5)
        ready = httpx.get(f"{url}/ready", timeout=5).status_code == 200
    except httpx.HTTPError:
        return {}
    if response.status_code != 200 or not ready:
        return {}
    owners: dict[str, set[int]] = {}
    for host, topics in response.json().items():
        for topic, partitions in topics.items():
            if topic.endswith(f"-{TABLE_NAME}-changelog") and partitions:
                owners[host] = set(partitions)
    return owners


def split_between(urls: list[str], advertised: set[str]) -> Callable[[], dict[str, set[int]] | None]:
    """Both workers ready and agreeing that each owns part of the table, all of it between them."""

    def check() -> dict[str, set[int]] | None:
        views = [changelog_owners(url) for url in urls]
        first = views[0]
        if any(view != first for view in views) or set(first) != advertised:
            return None
        owned = list(first.values())
        if sum(len(p) for p in owned) != PARTITIONS or set().union(*owned) != set(range(PARTITIONS)):
            return None
        return first

    return check


def customer_view(body: dict[str, Any]) -> dict[str, Any]:
    """The body without the two fields the view derives for support staff."""
    derived = ("store_credit_balance", "active_returns")
    return {key: value for key, value in body.items() if key not in derived}


def test_customer_state_is_the_same_asked_on_either_worker(
    start_worker: WorkerFactory, publish: Callable[..., None], sandbox: SandboxThread
) -> None:
    env = {"RETURNSYNC_ADVERTISED_HOST": ADVERTISED}
    workers = [start_worker(index=0, env=env), start_worker(index=1, env=env)]
    urls: list[str] = [worker.web_url for worker in workers]  # type: ignore[attr-defined]
    advertised = {url.replace("127.0.0.1", ADVERTISED) for url in urls}

    # The second worker's join rebalances the first: wait until the group settled on both.
    owners = wait_until(split_between(urls, advertised), within=120, every=0.5,
                        what=f"both workers ready and splitting {PARTITIONS} partitions; views: "
                             + "; ".join(f"{url}: {changelog_owners(url)}" for url in urls))

    events = demo_events(24, seed=13)
    expected = expected_klaviyo(events)
    publish(events)
    wait_until(lambda: sandbox.event_keys() >= expected.events, within=60,
               what=f"{len(expected.events)} timeline events in the sandbox")

    owner_of = {partition: host for host, partitions in owners.items() for partition in partitions}
    states_by_owner: dict[str, list[Any]] = {host: [] for host in owners}
    for state in expected.states.values():
        states_by_owner[owner_of[expected_partition(state.customer_key.encode(), PARTITIONS)]].append(state)
    assert all(states_by_owner.values()), f"customers on both workers' partitions: {states_by_owner}"

    problems = []
    for owner, states in states_by_owner.items():
        for state in states:
            answers = [httpx.get(f"{url}/customers/{state.identity.email}", timeout=10) for url in urls]
            bodies = [a.json() if a.status_code == 200 else f"{a.status_code} {a.text}" for a in answers]
            if bodies[0] != bodies[1]:
                problems.append(f"{state.customer_key} (owned by {owner}): {urls[0]} and {urls[1]} differ: "
                                f"{bodies[0]!r} != {bodies[1]!r}")
            elif not isinstance(bodies[0], dict) or customer_view(bodies[0]) != state_to_dict(state):
                problems.append(f"{state.customer_key} (owned by {owner}): {bodies[0]!r}")
    assert not problems, "\n".join(problems)

    unknown = [httpx.get(f"{url}/customers/nobody@returnsync-demo.com", timeout=10) for url in urls]
    assert [answer.status_code for answer in unknown] == [404, 404]
