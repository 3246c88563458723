"""One Klaviyo budget across the fleet: each worker plans for its share of the sync partitions.

Pure, on an injected clock: the fleet's spends are counted in every interval as long as one of
Klaviyo's windows (1 s, 60 s) and compared with the account's limit."""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import Iterator, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents import metrics
from agents.klaviyo import channels as channels_module
from agents.klaviyo.accounts import KlaviyoAccount
from agents.klaviyo.channels import Channels, set_fleet_share
from agents.klaviyo.ratelimit import (
    BURST_MARGIN,
    BURST_SECONDS,
    KLAVIYO_LIMITS,
    STEADY_MARGIN,
    STEADY_SECONDS,
    Budgets,
    EndpointBudget,
    Limit,
    TokenWindow,
    planned,
)
from agents.settings import Settings

PARTITIONS = 8
THREE_WORKERS = (3, 3, 2)  # how the sync group spreads 8 partitions over 3 members
SCALES = (1.0, 0.5, 0.4, 0.2, 0.1, 0.05, 0.01)


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def greedy(budgets: Sequence[EndpointBudget], clock: Clock, seconds: float) -> list[float]:
    """Every worker sends whenever its budget lets it: a backlog on each. Returns the send times."""
    sent: list[float] = []
    end = clock.now + seconds
    while clock.now < end:
        for budget in budgets:
            while budget.try_spend():
                sent.append(clock.now)
        clock.now = min(budget.ready_at() for budget in budgets)
    return sent


def busiest(sent: list[float], window: float) -> int:
    """Most sends in any interval [t, t + window): what a fixed window, wherever it starts, sees."""
    times = sorted(sent)
    return max((bisect.bisect_left(times, t + window) - i for i, t in enumerate(times)), default=0)


def account_limits(scale: float) -> Iterator[tuple[str, Limit]]:
    for name, limit in KLAVIYO_LIMITS.items():
        yield name, limit.scaled(scale)


def fleet(limit: Limit, clock: Clock, assigned: Sequence[int] = THREE_WORKERS) -> list[EndpointBudget]:
    budgets = [EndpointBudget(limit, clock) for _ in assigned]
    for budget, partitions in zip(budgets, assigned, strict=True):
        budget.set_share(partitions / PARTITIONS)
    return budgets


@pytest.mark.parametrize("scale", SCALES)
def test_three_workers_plans_add_up_to_at_most_the_account_limit_on_every_endpoint(scale: float) -> None:
    for name, limit in account_limits(scale):
        for fleet_limit, seconds in ((limit.burst_per_second, BURST_SECONDS + BURST_MARGIN),
                                     (limit.steady_per_minute, STEADY_SECONDS + STEADY_MARGIN)):
            parts = [planned(fleet_limit, seconds, n / PARTITIONS) for n in THREE_WORKERS]
            # Tokens per second, on average: never above the account's, whatever the rounding.
            assert sum(tokens / hold for tokens, hold in parts) <= fleet_limit / seconds + 1e-12, name
            if all(hold == seconds for _, hold in parts):  # every share is a token a window or more
                assert sum(tokens for tokens, _ in parts) <= fleet_limit, (name, scale, parts)


@pytest.mark.parametrize("scale", [1.0, 0.5, 0.4])
def test_three_greedy_workers_never_put_more_than_the_limit_in_one_of_klaviyos_windows(scale: float) -> None:
    """Where each worker's share is at least one token per window (every endpoint but the custom
    objects' 3/s ones), the per-window bound holds for the fleet as it did for one
    worker; the busiest endpoint's steady window is still used to within the rounding. Shares
    below one token a window keep the average only (the next test)."""
    smallest = min(THREE_WORKERS) / PARTITIONS
    for name, limit in account_limits(scale):
        if limit.burst_per_second * smallest < 1:
            assert name.startswith(("data-source", "object-")), name  # only those are that small
            continue
        clock = Clock()
        sent = greedy(fleet(limit, clock), clock, 3 * STEADY_SECONDS)
        assert busiest(sent, BURST_SECONDS) <= limit.burst_per_second, name
        assert busiest(sent, STEADY_SECONDS) <= limit.steady_per_minute, name
        floors = sum(int(limit.steady_per_minute * n / PARTITIONS) for n in THREE_WORKERS)
        assert busiest(sent, STEADY_SECONDS) == floors, name
        assert floors >= limit.steady_per_minute - len(THREE_WORKERS), name


def test_a_share_below_one_token_a_window_keeps_only_the_average_rate() -> None:
    """Bulk endpoints at a tenth of Klaviyo's limits allow 1 request a second: 3/8 of that is one
    request every 3.2 s. On average the fleet keeps the limit; a single window may see one
    request from each worker (documented in ratelimit.py)."""
    clock = Clock()
    limit = Limit(1, 1000)  # the burst window alone binds
    budgets = fleet(limit, clock)
    seconds = 600.0
    sent = greedy(budgets, clock, seconds)
    per_second = len(sent) / seconds
    assert per_second <= 1 / (BURST_SECONDS + BURST_MARGIN) + len(budgets) / seconds
    assert per_second >= 0.97 / (BURST_SECONDS + BURST_MARGIN)
    assert busiest(sent, BURST_SECONDS) == len(budgets)  # the average-only guarantee, shown


def test_a_decrease_binds_at_once_and_spent_tokens_stay_spent() -> None:
    clock = Clock()
    budget = EndpointBudget(Limit(10, 150), clock)
    start = clock.now
    for _ in range(3):
        assert budget.try_spend()
        clock.now += 0.1
    budget.set_share(2 / 10)  # 2 a second from now on; 3 are out
    assert budget.available() == 0 and not budget.try_spend()
    # Free again once only one of the three is still out: when the second returns.
    assert budget.ready_at() == pytest.approx(start + 0.1 + BURST_SECONDS + BURST_MARGIN)
    clock.now = budget.ready_at()
    assert budget.try_spend() and not budget.try_spend()


def test_an_increase_frees_its_extra_tokens_one_window_later() -> None:
    clock = Clock()
    budget = EndpointBudget(Limit(8, 80), clock)
    budget.set_share(2 / 8)  # a fresh budget: 2 a second, 20 a minute, at once
    assert budget.available() == 2
    budget.set_share(4 / 8)  # two partitions more: their previous owner may have just spent
    assert budget.available() == 2, "no more now than before the increase"
    clock.now += BURST_SECONDS + BURST_MARGIN
    assert budget.available() == 4

    steady = TokenWindow(80, STEADY_SECONDS + STEADY_MARGIN)
    steady.set_share(2 / 8, clock.now)
    steady.set_share(4 / 8, clock.now)
    assert steady.available(clock.now) == 20
    window = STEADY_SECONDS + STEADY_MARGIN
    assert steady.available(clock.now + window - 0.01) == 20
    assert steady.available(clock.now + window) == 40


def test_a_fresh_budget_plans_for_its_share_at_once() -> None:
    """A process's first assignment, or an account it meets after it: no wait (the documented
    risk: a crashed predecessor's spends of the last window are not known)."""
    budgets = Budgets(share=3 / 8, clock=Clock())
    assert budgets.available("profile-import") == 28  # floor(75 * 3/8)
    assert budgets.available("events") == 131  # floor(350 * 3/8)
    assert budgets.share == 3 / 8


def test_a_share_must_be_a_fraction_of_the_budget() -> None:
    budget = EndpointBudget(Limit(10, 150), Clock())
    for share in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match="share"):
            budget.set_share(share)


# Three members' partition counts: at least one each, 8 in all.
assignments = st.integers(1, 6).flatmap(
    lambda first: st.integers(1, 7 - first).map(lambda second: (first, second, PARTITIONS - first - second)))


@settings(max_examples=40, deadline=None)
@given(
    burst=st.integers(8, 40),
    steady_factor=st.integers(1, 8),
    rebalances=st.lists(st.tuples(st.floats(0.05, 90), assignments), min_size=1, max_size=6),
)
def test_partitions_moving_between_workers_never_overrun_a_window(
    burst: int, steady_factor: int, rebalances: list[tuple[float, tuple[int, int, int]]]
) -> None:
    """Partitions move between three busy workers at arbitrary moments: decreases bind at once,
    increases a window later, so no interval as long as one of Klaviyo's windows ever holds more
    than the account's limit (each share is at least one token a window here)."""
    clock = Clock()
    limit = Limit(burst, burst * steady_factor)
    budgets = fleet(limit, clock)
    sent: list[float] = []
    for gap, assigned in rebalances:
        sent += greedy(budgets, clock, gap)
        for budget, partitions in zip(budgets, assigned, strict=True):
            budget.set_share(partitions / PARTITIONS)
    sent += greedy(budgets, clock, 2 * STEADY_SECONDS)
    assert busiest(sent, BURST_SECONDS) <= limit.burst_per_second
    assert busiest(sent, STEADY_SECONDS) <= limit.steady_per_minute


# --- the process's budgets follow the sync consumer's assignment -----------------------------


@pytest.fixture
def fresh_fleet(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(channels_module, "_SHARED_BUDGETS", {})
    monkeypatch.setattr(channels_module, "_fleet_share", 1.0)
    metrics.KLAVIYO_BUDGET_SHARE.set(1)
    yield
    metrics.KLAVIYO_BUDGET_SHARE.set(1)


def share_gauge() -> float | None:
    return metrics.REGISTRY.get_sample_value("returnsync_klaviyo_budget_share")


@pytest.mark.usefixtures("fresh_fleet")
def test_every_budget_of_the_process_follows_the_sync_assignment() -> None:
    settings = Settings.from_env({"KLAVIYO_API_KEY": "pk_default_account", "RETURNSYNC_DEV": "1",
                                  "KLAVIYO_API_KEY_ACME": "pk_acme_account"})
    sync = Channels.from_settings(settings)
    budgets = sync.for_tenant("default").client.budgets
    assert budgets.available("profile-import") == 75, "before any assignment: the whole budget"
    assert share_gauge() == 1

    sync.plan_fleet_share(3)  # the first assignment: 3 of 8, at once
    assert budgets.available("profile-import") == 28
    assert share_gauge() == 3 / 8
    # A reconcile's Channels, and an account met later, spend from the same shared budgets.
    reconcile = Channels.from_settings(settings)
    assert reconcile.for_tenant("default").client.budgets is budgets
    assert reconcile.for_tenant("acme").client.budgets.available("profile-import") == 28

    sync.plan_fleet_share(4)  # a member left: 4 of 8, but only a window later
    assert budgets.share == 0.5
    assert budgets.available("profile-import") == 28
    assert share_gauge() == 0.5
    asyncio.run(sync.aclose())
    asyncio.run(reconcile.aclose())


@pytest.mark.usefixtures("fresh_fleet")
def test_a_member_without_partitions_keeps_one_partitions_share() -> None:
    assert set_fleet_share(0, PARTITIONS) == 1 / PARTITIONS
    assert set_fleet_share(PARTITIONS, PARTITIONS) == 1.0
    assert set_fleet_share(3, PARTITIONS) == 3 / PARTITIONS


def test_channels_built_by_hand_keep_their_own_budgets() -> None:
    account = KlaviyoAccount("default", "pk_test", "http://127.0.0.1:1")
    channels = Channels(lambda tenant: account, lambda acct: channels_module.Channel(acct, revision="x"))
    before = channels_module._fleet_share
    channels.plan_fleet_share(1)
    assert channels_module._fleet_share == before
    assert channels.for_tenant("default").client.budgets.available("profile-import") == 75
    asyncio.run(channels.aclose())
