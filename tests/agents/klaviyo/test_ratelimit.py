"""Client-side rate budgets: spent before sending, never more than Klaviyo's windows allow."""

from __future__ import annotations

import asyncio
import time

from hypothesis import given, settings
from hypothesis import strategies as st

from agents.klaviyo.ratelimit import (
    BURST_MARGIN,
    KLAVIYO_LIMITS,
    STEADY_MARGIN,
    Budgets,
    EndpointBudget,
    Limit,
    TokenWindow,
)
from klaviyo_sandbox.ratelimit import Limit as SandboxLimit
from klaviyo_sandbox.ratelimit import RateLimiter


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_limits_are_klaviyos_published_per_endpoint_limits() -> None:
    # klaviyo-api.md §4.2; the L tier planned at 700/m as §4.1 advises.
    assert KLAVIYO_LIMITS["events"] == Limit(350, 3500)
    assert KLAVIYO_LIMITS["profile-import"] == Limit(75, 700)
    for bulk in ("event-bulk-create-jobs", "profile-bulk-import-jobs", "profile-bulk-import-job",
                 "import-errors"):
        assert KLAVIYO_LIMITS[bulk] == Limit(10, 150)


def test_a_spent_token_returns_one_window_later() -> None:
    window = TokenWindow(limit=2, seconds=1.0)
    window.spend(10.0)
    window.spend(10.5)
    assert window.available(10.9) == 0
    assert window.ready_at(10.9) == 11.0
    assert window.available(11.0) == 1
    assert window.available(11.5) == 2


def test_available_is_the_tighter_window_and_zero_while_blocked() -> None:
    clock = Clock()
    budget = EndpointBudget(Limit(3, 5), clock)
    assert budget.available() == 3
    for _ in range(3):
        assert budget.try_spend()
    assert budget.available() == 0 and not budget.try_spend()
    clock.now += 1 + BURST_MARGIN
    assert budget.available() == 2  # the steady window has 2 of 5 left
    budget.block_for(4)
    assert budget.available() == 0 and not budget.try_spend()
    clock.now += 4
    assert budget.try_spend()


def test_retry_after_block_only_extends() -> None:
    clock = Clock()
    budget = EndpointBudget(Limit(10, 100), clock)
    budget.block_for(5)
    budget.block_for(1)
    assert budget.ready_at() == clock.now + 5


def test_scaling_never_goes_below_one_request_per_window() -> None:
    assert Limit(10, 150).scaled(0.05) == Limit(1, 7)
    assert Limit(350, 3500).scaled(0.001) == Limit(1, 3)
    budgets = Budgets(scale=0.2)
    assert budgets.available("profile-import") == 15
    assert budgets.available("no-such-endpoint") >= 1_000_000


@settings(max_examples=60, deadline=None)
@given(
    burst=st.integers(1, 12),
    steady=st.integers(1, 40),
    gaps=st.lists(st.floats(0, 3), min_size=1, max_size=300),
    jitter=st.lists(st.floats(0, BURST_MARGIN * 0.99), min_size=1, max_size=300),
)
def test_greedy_client_is_never_refused_by_klaviyos_fixed_windows(
    burst: int, steady: int, gaps: list[float], jitter: list[float]
) -> None:
    """Whatever the arrival pattern, and with network jitter below the margin, every request the
    budget lets out passes the sandbox's Klaviyo-style fixed windows: no 429 by construction."""
    clock, server_clock = Clock(), Clock()
    budget = EndpointBudget(Limit(burst, steady), clock)
    limiter = RateLimiter({"op": SandboxLimit(burst, steady)}, 1.0, clock=server_clock)
    sent = []
    for index, gap in enumerate(gaps):
        clock.now += gap
        while not budget.try_spend():
            clock.now = budget.ready_at()
        sent.append(clock.now + jitter[index % len(jitter)])
    for arrival in sorted(sent):
        server_clock.now = arrival
        decision = limiter.check("acct", "op")
        assert decision is not None and decision.allowed, f"refused at {arrival - 1000:.3f}s"


def test_a_steady_backlog_uses_the_whole_steady_allowance() -> None:
    clock = Clock()
    budget = EndpointBudget(Limit(10, 150), clock)
    start, spent = clock.now, 0
    while clock.now - start < 600:
        if budget.try_spend():
            spent += 1
        else:
            clock.now = budget.ready_at()
    per_minute = spent / ((clock.now - start) / 60)
    assert 150 * 60 / (60 + STEADY_MARGIN) * 0.99 <= per_minute <= 150


async def test_acquire_waits_for_the_next_token_in_real_time() -> None:
    budget = EndpointBudget(Limit(2, 100))
    started = time.monotonic()
    waits = [await budget.acquire() for _ in range(3)]
    elapsed = time.monotonic() - started
    assert waits[0] < 0.05 and waits[1] < 0.05
    assert 1 + BURST_MARGIN - 0.05 <= elapsed < 1 + BURST_MARGIN + 0.5


async def test_concurrent_acquirers_share_the_budget() -> None:
    budget = EndpointBudget(Limit(3, 100))
    started = time.monotonic()
    await asyncio.gather(*(budget.acquire() for _ in range(6)))
    assert time.monotonic() - started >= 1 + BURST_MARGIN - 0.05
