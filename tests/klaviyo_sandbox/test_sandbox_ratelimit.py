"""Fixed-window rate limiting on a controlled clock."""

from __future__ import annotations

import pytest

from klaviyo_sandbox.ratelimit import Limit, RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


LIMITS = {"op": Limit(burst_per_second=2, steady_per_minute=5)}


@pytest.fixture
def clock() -> Clock:
    return Clock()


def allowed(limiter: RateLimiter, n: int, account: str = "a", op: str = "op") -> list[bool]:
    return [
        bool(decision and decision.allowed) for decision in (limiter.check(account, op) for _ in range(n))
    ]


def test_burst_window_refuses_then_reopens_after_a_second(clock: Clock) -> None:
    limiter = RateLimiter(LIMITS, clock=clock)
    assert allowed(limiter, 3) == [True, True, False]
    refused = limiter.check("a", "op")
    assert refused is not None and refused.retry_after == 1 and refused.headers() == {"Retry-After": "1"}
    clock.now += 1.0
    assert allowed(limiter, 1) == [True]


def test_steady_window_retry_after_is_time_left_in_the_minute(clock: Clock) -> None:
    limiter = RateLimiter(LIMITS, clock=clock)
    for _ in range(3):  # 2 + 2 + 1 requests across three seconds use up the 5/minute
        allowed(limiter, 2)
        clock.now += 1.0
    refused = limiter.check("a", "op")
    assert refused is not None and not refused.allowed
    assert refused.retry_after == 57  # the minute opened at t=1000, now is t=1003
    clock.now += 56.5
    assert not allowed(limiter, 1)[0]
    clock.now += 0.5
    assert allowed(limiter, 1) == [True]


def test_headers_describe_the_steady_window(clock: Clock) -> None:
    limiter = RateLimiter(LIMITS, clock=clock)
    limiter.check("a", "op")
    clock.now += 0.25
    decision = limiter.check("a", "op")
    assert decision is not None
    assert decision.headers() == {"RateLimit-Limit": "5", "RateLimit-Remaining": "3", "RateLimit-Reset": "60"}


def test_accounts_and_endpoints_have_separate_budgets(clock: Clock) -> None:
    limiter = RateLimiter({**LIMITS, "other": Limit(2, 5)}, clock=clock)
    assert allowed(limiter, 3) == [True, True, False]
    assert allowed(limiter, 1, account="b") == [True]
    assert allowed(limiter, 1, op="other") == [True]


@pytest.mark.parametrize(
    ("scale", "expected"), [(10.0, Limit(20, 50)), (0.1, Limit(1, 1)), (1.5, Limit(3, 7))]
)
def test_scale_multiplies_with_a_floor_of_one(scale: float, expected: Limit) -> None:
    assert RateLimiter(LIMITS, scale).scaled("op") == expected


def test_scale_zero_disables_and_unknown_operations_are_unlimited(clock: Clock) -> None:
    assert RateLimiter(LIMITS, 0, clock=clock).check("a", "op") is None
    assert RateLimiter(LIMITS, 1, clock=clock).check("a", "nope") is None
    with pytest.raises(ValueError, match="rate_limit_scale"):
        RateLimiter(LIMITS, -1)


def test_reset_one_account(clock: Clock) -> None:
    limiter = RateLimiter(LIMITS, clock=clock)
    allowed(limiter, 2)
    allowed(limiter, 2, account="b")
    limiter.reset("a")
    assert allowed(limiter, 1) == [True] and allowed(limiter, 1, account="b") == [False]
