"""Klaviyo's rate limits, spent before sending so that a 429 is the exception (klaviyo-api.md §4).

Klaviyo counts requests per account and endpoint in two fixed windows, 1 s (burst) and 60 s
(steady), whose alignment a client cannot see. A classic refilling token bucket would overrun
them: a bucket of 750 refilling at 12.5/s lets ~1,500 requests into one 60 s window. Here each
window is a bucket whose tokens come back exactly one window (plus a margin for network jitter)
after they were spent, so no interval of that length ever holds more than the limit, whatever
the server's alignment, and a steady backlog still uses the whole allowance.

The limits belong to the account, and every worker of the fleet spends them. A worker plans for
its `share` of them (agents/klaviyo/channels.py `set_fleet_share`: the share of the sync topic's
partitions it owns), so that the workers' plans add up to no more than the account's limits:

- floor(limit * share) tokens a window, the fleet's floors never adding up to more than the
  limit. Below one token a window, one token every window / (limit * share): the average rate
  holds, but a window may then see one request from each such worker, more than the limit.
- A decrease binds at once: tokens already spent stay spent, so the worker waits until its
  spends fall under the new limit.
- An increase frees the extra tokens one window later (they are spent "now" on paper): the
  partitions came from another worker, whose spends still count in Klaviyo's current window.
- A new budget starts with the current share at once: a fresh process does not know what a
  crashed predecessor spent in the last minute, nor does a newcomer wait for the workers it
  relieves to stop spending their larger shares, so a rebalance may overrun one window by up to
  the new worker's share.
"""

from __future__ import annotations

import asyncio
import bisect
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

BURST_SECONDS = 1.0
STEADY_SECONDS = 60.0
# The server stamps a request when it reads it, not when we sent it: a slower read of request
# N than of request N+limit would squeeze both into one of its windows. Margins cover that.
BURST_MARGIN = 0.2
STEADY_MARGIN = 1.0


@dataclass(frozen=True)
class Limit:
    burst_per_second: int
    steady_per_minute: int

    def scaled(self, scale: float) -> Limit:
        # As the sandbox scales: never below one request per window.
        return Limit(max(1, math.floor(self.burst_per_second * scale)),
                     max(1, math.floor(self.steady_per_minute * scale)))


# klaviyo-api.md §4.2 (OAS x-klaviyo-ratelimit), keyed by the client's endpoint names. The
# L tier's steady limit is 750/m in the OAS but 700/m in Klaviyo's docs (§4.1): plan for 700.
KLAVIYO_LIMITS: Mapping[str, Limit] = {
    "events": Limit(350, 3500),
    "event-bulk-create-jobs": Limit(10, 150),
    "profile-import": Limit(75, 700),
    "profile-bulk-import-jobs": Limit(10, 150),
    "profile-bulk-import-job": Limit(10, 150),
    "import-errors": Limit(10, 150),
    "profiles": Limit(75, 700),
    # Custom objects (opt-in): the data-source lookups, one record, up to 500 records.
    "data-sources": Limit(3, 60),
    "data-source-record-create-jobs": Limit(75, 700),
    "data-source-record-bulk-create-jobs": Limit(3, 15),
    # ... and their objects, read back for drift reports.
    "object-types": Limit(3, 60),
    "object-records": Limit(3, 60),
}


# limit * share is a float: 3 * (1/3) must still count as one whole token.
_ROUNDING = 1e-9


def planned(limit: int, seconds: float, share: float) -> tuple[int, float]:
    """A worker's part of a `limit`-per-`seconds` window at `share`: (tokens, seconds each is held)."""
    rate = limit * share
    if rate >= 1 - _ROUNDING:
        # floor: whatever the shares, sum(floor(limit * share_i)) <= limit when the shares sum to 1.
        return math.floor(rate + _ROUNDING), seconds
    return 1, seconds / rate  # below a token a window: keep the average rate


class TokenWindow:
    """`limit` tokens (this worker's share of them); a spent token returns `seconds` after it was
    spent, or later when the share is below one token a window."""

    def __init__(self, limit: int, seconds: float) -> None:
        self.fleet_limit = limit
        self.seconds = seconds
        self.limit = limit  # tokens this worker may have out at once
        self.hold = seconds  # how long a token spent now stays out
        self._returns: list[float] = []  # when each spent token comes back, ascending

    def _expire(self, now: float) -> None:
        del self._returns[: bisect.bisect_right(self._returns, now)]

    def available(self, now: float) -> int:
        self._expire(now)
        return max(0, self.limit - len(self._returns))

    def ready_at(self, now: float) -> float:
        """When the next token is free: now, or when enough spent ones have returned (after a
        decrease, more than one may have to)."""
        self._expire(now)
        excess = len(self._returns) - self.limit
        return now if excess < 0 else self._returns[excess]

    def spend(self, now: float) -> None:
        bisect.insort(self._returns, now + self.hold)

    def set_share(self, share: float, now: float) -> None:
        limit, hold = planned(self.fleet_limit, self.seconds, share)
        self._expire(now)
        # An increase: the extra tokens come back one window from now, like tokens spent now.
        for _ in range(limit - self.limit):
            bisect.insort(self._returns, now + self.seconds)
        self.limit, self.hold = limit, hold


class EndpointBudget:
    """Burst and steady windows of one endpoint of one account, plus any Retry-After block."""

    def __init__(self, limit: Limit, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self._clock = clock
        self._windows = (TokenWindow(limit.burst_per_second, BURST_SECONDS + BURST_MARGIN),
                         TokenWindow(limit.steady_per_minute, STEADY_SECONDS + STEADY_MARGIN))
        self._blocked_until = -math.inf
        self.share = 1.0

    def set_share(self, share: float) -> None:
        """Plan for `share` (0 < share <= 1) of `limit` from now on (see the module's docstring)."""
        if not 0 < share <= 1:
            raise ValueError(f"a budget share must be in (0, 1], not {share}")
        now = self._clock()
        for window in self._windows:
            window.set_share(share, now)
        self.share = share

    def available(self) -> int:
        """Requests that could go out right now without waiting: what a plan may spend on singles."""
        now = self._clock()
        if now < self._blocked_until:
            return 0
        return min(window.available(now) for window in self._windows)

    def ready_at(self, now: float | None = None) -> float:
        now = self._clock() if now is None else now
        return max(self._blocked_until, *(window.ready_at(now) for window in self._windows))

    def try_spend(self) -> bool:
        now = self._clock()
        if self.ready_at(now) > now:
            return False
        for window in self._windows:
            window.spend(now)
        return True

    def block_for(self, seconds: float) -> None:
        """Klaviyo said Retry-After: nothing goes to this endpoint before then."""
        self._blocked_until = max(self._blocked_until, self._clock() + seconds)

    async def acquire(self) -> float:
        """Wait for a token and spend it; returns the seconds waited."""
        started = self._clock()
        while True:
            if self.try_spend():
                return self._clock() - started
            await asyncio.sleep(max(0.001, self.ready_at() - self._clock()))


class Budgets:
    """One account's budgets, one per endpoint. Endpoints without a published limit are free."""

    def __init__(
        self,
        limits: Mapping[str, Limit] = KLAVIYO_LIMITS,
        *,
        scale: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        share: float = 1.0,
    ) -> None:
        self._budgets = {name: EndpointBudget(limit.scaled(scale), clock) for name, limit in limits.items()}
        self.share = 1.0
        # Nothing spent yet, and share <= 1 is a decrease: the share applies at once.
        self.set_share(share)

    def set_share(self, share: float) -> None:
        """This worker's share of the account's limits (scaled), on every endpoint."""
        for budget in self._budgets.values():
            budget.set_share(share)
        self.share = share

    def get(self, endpoint: str) -> EndpointBudget | None:
        return self._budgets.get(endpoint)

    def available(self, endpoint: str) -> int:
        budget = self._budgets.get(endpoint)
        return budget.available() if budget is not None else 1_000_000
