"""Klaviyo's rate limits, spent before sending so that a 429 is the exception (klaviyo-api.md §4).

Klaviyo counts requests per account and endpoint in two fixed windows, 1 s (burst) and 60 s
(steady), whose alignment a client cannot see. A classic refilling token bucket would overrun
them: a bucket of 750 refilling at 12.5/s lets ~1,500 requests into one 60 s window. Here each
window is a bucket whose tokens come back exactly one window (plus a margin for network jitter)
after they were spent, so no interval of that length ever holds more than the limit, whatever
the server's alignment, and a steady backlog still uses the whole allowance.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
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
}


class TokenWindow:
    """`limit` tokens; a spent token returns `seconds` after it was spent."""

    def __init__(self, limit: int, seconds: float) -> None:
        self.limit = limit
        self.seconds = seconds
        self._spent: deque[float] = deque()

    def _expire(self, now: float) -> None:
        while self._spent and self._spent[0] + self.seconds <= now:
            self._spent.popleft()

    def available(self, now: float) -> int:
        self._expire(now)
        return self.limit - len(self._spent)

    def ready_at(self, now: float) -> float:
        """When the next token is free: now, or when the oldest spent one returns."""
        self._expire(now)
        return now if len(self._spent) < self.limit else self._spent[0] + self.seconds

    def spend(self, now: float) -> None:
        self._spent.append(now)


class EndpointBudget:
    """Burst and steady windows of one endpoint of one account, plus any Retry-After block."""

    def __init__(self, limit: Limit, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self._clock = clock
        self._windows = (TokenWindow(limit.burst_per_second, BURST_SECONDS + BURST_MARGIN),
                         TokenWindow(limit.steady_per_minute, STEADY_SECONDS + STEADY_MARGIN))
        self._blocked_until = -math.inf

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
    ) -> None:
        self._budgets = {name: EndpointBudget(limit.scaled(scale), clock) for name, limit in limits.items()}

    def get(self, endpoint: str) -> EndpointBudget | None:
        return self._budgets.get(endpoint)

    def available(self, endpoint: str) -> int:
        budget = self._budgets.get(endpoint)
        return budget.available() if budget is not None else 1_000_000
