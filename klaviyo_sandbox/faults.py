"""Injected faults: what a test asks the sandbox to do to the next matching API requests.

A fault is used up by count or by time; with neither it holds until cleared, which suits
a permanent condition such as an email whose identifiers conflict (409).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any

ALLOWED_KEYS = frozenset(
    {"status", "count", "seconds", "retry_after", "delay", "drop", "email", "endpoint", "method", "detail"}
)
MAX_DELAY_SECONDS = 120.0


class FaultError(ValueError):
    """A fault request the sandbox cannot honour; the message says which field."""


@dataclass
class Fault:
    id: str
    status: int | None = None
    retry_after: int | None = None
    delay: float = 0.0
    drop: bool = False
    email: str | None = None
    endpoint: str | None = None
    method: str | None = None
    detail: str | None = None
    remaining: int | None = None
    expires_at: float | None = None
    hits: int = 0

    def matches(self, method: str, path: str, emails: Iterable[str]) -> bool:
        if self.method is not None and self.method != method:
            return False
        if self.endpoint is not None:
            base = self.endpoint.rstrip("/")
            if path.rstrip("/") != base and not path.startswith(base + "/"):
                return False
        return self.email is None or self.email in emails

    def describe(self) -> dict[str, Any]:
        return {key: value for key, value in asdict(self).items() if key != "expires_at"}


def parse_fault(body: Mapping[str, Any], fault_id: str, now: float) -> Fault:
    unknown = set(body) - ALLOWED_KEYS
    if unknown:
        raise FaultError(f"unknown fault fields: {', '.join(sorted(unknown))}")
    status = _optional_int(body, "status", 400, 599)
    delay = body.get("delay", 0.0)
    if isinstance(delay, bool) or not isinstance(delay, int | float) or not 0 <= delay <= MAX_DELAY_SECONDS:
        raise FaultError(f"delay must be a number of seconds between 0 and {MAX_DELAY_SECONDS:g}")
    drop = body.get("drop", False)
    if not isinstance(drop, bool):
        raise FaultError("drop must be true or false")
    if status is None and not drop and not delay:
        raise FaultError("a fault needs status, delay or drop")
    if status is not None and drop:
        raise FaultError("drop closes the connection, so it cannot also send a status")
    seconds = body.get("seconds")
    if seconds is not None and (
        isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds <= 0
    ):
        raise FaultError("seconds must be a positive number")
    retry_after = _optional_int(body, "retry_after", 0, 86_400)
    if status == 429 and retry_after is None:
        retry_after = 1
    for name in ("email", "endpoint", "method", "detail"):
        if body.get(name) is not None and not isinstance(body[name], str):
            raise FaultError(f"{name} must be a string")
    endpoint = body.get("endpoint")
    if endpoint is not None and not endpoint.startswith("/"):
        raise FaultError("endpoint must be a path such as /api/events")
    email = body.get("email")
    return Fault(
        id=fault_id,
        status=status,
        retry_after=retry_after,
        delay=float(delay),
        drop=drop,
        email=email.strip().lower() if email else None,
        endpoint=endpoint,
        method=body["method"].upper() if body.get("method") else None,
        detail=body.get("detail"),
        remaining=_optional_int(body, "count", 1, 1_000_000),
        expires_at=now + seconds if seconds is not None else None,
    )


def _optional_int(body: Mapping[str, Any], name: str, low: int, high: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise FaultError(f"{name} must be an integer between {low} and {high}")
    return value


class FaultBook:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._faults: list[Fault] = []
        self._ids = itertools.count(1)

    @property
    def wants_emails(self) -> bool:
        """Only email-scoped faults need the body parsed before normal processing."""
        return any(fault.email is not None for fault in self._faults)

    def add(self, body: Mapping[str, Any]) -> Fault:
        fault = parse_fault(body, f"fault-{next(self._ids)}", self._clock())
        self._faults.append(fault)
        return fault

    def clear(self, fault_id: str | None = None) -> int:
        """Remove one fault by id, or all of them; returns how many were removed."""
        kept = [fault for fault in self._faults if fault_id is not None and fault.id != fault_id]
        cleared, self._faults = len(self._faults) - len(kept), kept
        return cleared

    def active(self) -> list[Fault]:
        self._expire()
        return list(self._faults)

    def take(self, method: str, path: str, emails: Iterable[str]) -> Fault | None:
        """The first matching fault, spending one of its uses; insertion order decides ties."""
        self._expire()
        wanted = set(emails)
        for fault in self._faults:
            if fault.matches(method, path, wanted):
                fault.hits += 1
                if fault.remaining is not None:
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        self._faults.remove(fault)
                return fault
        return None

    def _expire(self) -> None:
        now = self._clock()
        self._faults = [f for f in self._faults if f.expires_at is None or f.expires_at > now]


def emails_in(body: Any) -> Iterator[str]:
    """Every `email` a request body names, normalised, for email-scoped faults."""
    if isinstance(body, dict):
        for key, item in body.items():
            if key == "email" and isinstance(item, str):
                yield item.strip().lower()
            else:
                yield from emails_in(item)
    elif isinstance(body, list):
        for item in body:
            yield from emails_in(item)
