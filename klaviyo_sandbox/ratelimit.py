"""Klaviyo's rate limits: per account, per endpoint, two fixed windows (1 s burst, 60 s steady).

A window opens with the first request after the previous one ended, so `Retry-After` is
the exact wait until the window that refused the request closes (rounded up, at least 1),
which is what a client honouring it needs to succeed on its next try.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

BURST_SECONDS = 1.0
STEADY_SECONDS = 60.0


@dataclass(frozen=True)
class Limit:
    burst_per_second: int
    steady_per_minute: int


@dataclass(frozen=True)
class Decision:
    allowed: bool
    retry_after: int  # seconds; meaningful when refused
    limit: int  # steady window, for the RateLimit-* headers
    remaining: int
    reset: int

    def headers(self) -> dict[str, str]:
        if not self.allowed:
            return {"Retry-After": str(self.retry_after)}
        return {"RateLimit-Limit": str(self.limit), "RateLimit-Remaining": str(self.remaining),
                "RateLimit-Reset": str(self.reset)}


@dataclass
class _Window:
    length: float
    limit: int
    start: float = -math.inf
    count: int = 0

    def roll(self, now: float) -> None:
        if now >= self.start + self.length:
            self.start, self.count = now, 0

    def wait(self, now: float) -> int:
        return max(1, math.ceil(self.start + self.length - now))


class RateLimiter:
    """`scale` multiplies Klaviyo's published limits; 0 turns limiting off."""

    def __init__(
        self, limits: Mapping[str, Limit], scale: float = 1.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if scale < 0:
            raise ValueError("rate_limit_scale must be >= 0")
        self._limits = dict(limits)
        self._scale = scale
        self._clock = clock
        self._windows: dict[tuple[str, str], tuple[_Window, _Window]] = {}

    @property
    def enabled(self) -> bool:
        return self._scale > 0

    def scaled(self, operation: str) -> Limit | None:
        base = self._limits.get(operation)
        if base is None or not self.enabled:
            return None
        # Never below 1: a scaled-down limit of 0 would refuse everything forever.
        return Limit(max(1, math.floor(base.burst_per_second * self._scale)),
                     max(1, math.floor(base.steady_per_minute * self._scale)))

    def check(self, account: str, operation: str) -> Decision | None:
        """Count one request if the windows allow it; None when the endpoint is unlimited."""
        limit = self.scaled(operation)
        if limit is None:
            return None
        key = (account, operation)
        if key not in self._windows:
            self._windows[key] = (_Window(BURST_SECONDS, limit.burst_per_second),
                                  _Window(STEADY_SECONDS, limit.steady_per_minute))
        burst, steady = self._windows[key]
        now = self._clock()
        burst.roll(now)
        steady.roll(now)
        exceeded = [window for window in (burst, steady) if window.count >= window.limit]
        if exceeded:
            # Refused requests are not counted, as with Klaviyo's fixed windows.
            return Decision(False, max(window.wait(now) for window in exceeded), steady.limit, 0,
                            steady.wait(now))
        burst.count += 1
        steady.count += 1
        return Decision(True, 0, steady.limit, steady.limit - steady.count, steady.wait(now))

    def reset(self, account: str | None = None) -> None:
        if account is None:
            self._windows.clear()
        else:
            self._windows = {key: value for key, value in self._windows.items() if key[0] != account}
