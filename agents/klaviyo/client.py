"""One httpx AsyncClient per Klaviyo account, with typed outcomes and retries.

Every write returnsync makes is idempotent (profile upserts of the latest state, events with a
deterministic `unique_id`), so retrying a request whose answer was lost is always safe.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import orjson

from agents import metrics
from agents.klaviyo.bodies import encode, event_body, profile_import_body
from streams.projection import KlaviyoEvent, ProfileUpdate

log = logging.getLogger(__name__)

RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504, 524})
AUTH_STATUSES = frozenset({401, 403})


class KlaviyoError(Exception):
    def __init__(self, status: int | None, detail: str, errors: Sequence[Any] = ()) -> None:
        super().__init__(f"klaviyo status={status}: {detail}")
        self.status = status
        self.detail = detail
        self.errors = list(errors)


class KlaviyoRejected(KlaviyoError):
    """A permanent 4xx: the request will never succeed as it is. Goes to the dead-letter topic."""


class KlaviyoAuthFailed(KlaviyoError):
    """401/403: the key is wrong or lacks a scope. Delivery pauses; retrying burns nothing."""


@dataclass(frozen=True)
class RetryPolicy:
    base_delay: float = 0.5
    max_delay: float = 30.0
    # None: retry transient failures until they pass; the batch is not acknowledged meanwhile.
    max_attempts: int | None = None

    def delay(self, attempt: int, retry_after: float | None) -> float:
        # Full jitter spreads the retries of many workers after a shared outage.
        backoff = random.uniform(0, min(self.max_delay, self.base_delay * 2**attempt))
        return max(backoff, retry_after) if retry_after is not None else backoff


class KlaviyoClient:
    def __init__(
        self,
        *,
        api_key: str,
        base_url: str,
        revision: str,
        timeout: float = 15.0,
        retry: RetryPolicy | None = None,
        max_connections: int = 32,
    ) -> None:
        self.retry = retry or RetryPolicy()
        self._http = httpx.AsyncClient(
            base_url=base_url,
            headers={
                "Authorization": f"Klaviyo-API-Key {api_key}",
                "revision": revision,
                "Content-Type": "application/vnd.api+json",
                "Accept": "application/vnd.api+json",
                "User-Agent": "returnsync/0.1",
            },
            timeout=httpx.Timeout(timeout, connect=5.0),
            limits=httpx.Limits(max_connections=max_connections),
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def import_profile(self, update: ProfileUpdate) -> None:
        await self.send("profile-import", "POST", "/api/profile-import", profile_import_body(update))

    async def create_event(self, event: KlaviyoEvent) -> None:
        await self.send("events", "POST", "/api/events", event_body(event))

    async def profiles_by_email(self, emails: Sequence[str]) -> list[dict[str, Any]]:
        """Read profiles (100 emails per request) for drift checks and support tooling."""
        found: list[dict[str, Any]] = []
        for start in range(0, len(emails), 100):
            chunk = emails[start : start + 100]
            quoted = ",".join(f'"{email}"' for email in chunk)
            query = f'any(email,[{quoted}])' if len(chunk) > 1 else f'equals(email,"{chunk[0]}")'
            path = f"/api/profiles?filter={quote(query)}&page[size]=100"
            response = await self.send("profiles", "GET", path, None)
            found.extend(orjson.loads(response.content)["data"])
        return found

    async def send(
        self, endpoint: str, method: str, path: str, body: dict[str, Any] | None
    ) -> httpx.Response:
        content = encode(body) if body is not None else None
        attempt = 0
        while True:
            started = time.monotonic()
            try:
                response = await self._http.request(method, path, content=content)
            except httpx.TransportError as exc:
                # Timeouts and dropped connections: the request may or may not have landed.
                metrics.KLAVIYO_REQUESTS.labels(endpoint, "error").inc()
                self._give_up_if_exhausted(attempt, None, f"{type(exc).__name__}: {exc}")
                await self._wait(endpoint, attempt, None)
                attempt += 1
                continue
            finally:
                metrics.KLAVIYO_REQUEST_SECONDS.labels(endpoint).observe(time.monotonic() - started)
            status = response.status_code
            metrics.KLAVIYO_REQUESTS.labels(endpoint, str(status)).inc()
            if status < 300:
                return response
            errors = _errors(response)
            detail = errors[0].get("detail", response.reason_phrase) if errors else response.reason_phrase
            if status in AUTH_STATUSES:
                raise KlaviyoAuthFailed(status, str(detail), errors)
            if status not in RETRYABLE_STATUSES:
                raise KlaviyoRejected(status, str(detail), errors)
            if status == 429:
                metrics.KLAVIYO_RATE_LIMITED.labels(endpoint).inc()
            self._give_up_if_exhausted(attempt, status, str(detail))
            await self._wait(endpoint, attempt, _retry_after(response))
            attempt += 1

    def _give_up_if_exhausted(self, attempt: int, status: int | None, detail: str) -> None:
        if self.retry.max_attempts is not None and attempt + 1 >= self.retry.max_attempts:
            raise KlaviyoError(status, f"gave up after {attempt + 1} attempts: {detail}")

    async def _wait(self, endpoint: str, attempt: int, retry_after: float | None) -> None:
        metrics.KLAVIYO_RETRIES.labels(endpoint).inc()
        delay = self.retry.delay(attempt, retry_after)
        log.info("klaviyo retry endpoint=%s attempt=%d delay=%.2fs", endpoint, attempt + 1, delay)
        await asyncio.sleep(delay)


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def _errors(response: httpx.Response) -> list[dict[str, Any]]:
    try:
        errors = orjson.loads(response.content).get("errors", [])
    except (orjson.JSONDecodeError, AttributeError):
        return []
    return [error for error in errors if isinstance(error, dict)]
