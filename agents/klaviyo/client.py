"""One httpx AsyncClient per Klaviyo account: rate budgets, retries, the auth pause, typed outcomes.

Every write returnsync makes is idempotent (profile upserts of the latest state, events with a
deterministic `unique_id`), so retrying a request whose answer was lost is always safe. A request
spends its endpoint's budget before it is sent; a 429 blocks the endpoint until Retry-After has
passed; 5xx, timeouts and dropped connections back off exponentially with full jitter; 401/403
pause the whole account (one request probes, the rest wait) instead of failing the backlog.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import orjson

from agents import metrics
from agents.klaviyo.auth import AuthGate
from agents.klaviyo.bodies import encode
from agents.klaviyo.ratelimit import Budgets

log = logging.getLogger(__name__)

RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504, 524})
AUTH_STATUSES = frozenset({401, 403})
# Requests in flight per endpoint; the connection pool holds them all, so a request that has
# spent a token is sent at once instead of queueing for a connection (see ratelimit.py).
CONCURRENCY = {"events": 32, "profile-import": 16, "data-source-record-create-jobs": 16}
DEFAULT_CONCURRENCY = 4
BULK_TIMEOUT = 60.0


class KlaviyoError(Exception):
    def __init__(self, status: int | None, detail: str, errors: Sequence[Any] = ()) -> None:
        super().__init__(f"klaviyo status={status}: {detail}")
        self.status = status
        self.detail = detail
        self.errors = list(errors)


class KlaviyoRejected(KlaviyoError):
    """A permanent 4xx: the request will never succeed as it is. Goes to the dead-letter topic."""


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
        budgets: Budgets | None = None,
        timeout: float = 15.0,
        retry: RetryPolicy | None = None,
        auth_pause_seconds: float = 30.0,
        on_auth_change: Callable[[bool], None] = lambda paused: None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.retry = retry or RetryPolicy()
        self.budgets = budgets or Budgets()
        self.auth = AuthGate(auth_pause_seconds, on_auth_change)
        self._slots: dict[str, asyncio.Semaphore] = {}
        pool = sum(CONCURRENCY.values()) + 5 * DEFAULT_CONCURRENCY
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
            limits=httpx.Limits(max_connections=pool, max_keepalive_connections=pool),
            transport=transport,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def import_profile(self, body: dict[str, Any]) -> None:
        await self.send("profile-import", "POST", "/api/profile-import", body)

    async def create_event(self, body: dict[str, Any]) -> None:
        await self.send("events", "POST", "/api/events", body)

    async def bulk_import_profiles(self, body: dict[str, Any], wanted: Wanted | None = None) -> str:
        """Returns the job id to poll. `wanted`: see `send`."""
        response = await self.send("profile-bulk-import-jobs", "POST", "/api/profile-bulk-import-jobs", body,
                                   wanted)
        job_id: str = orjson.loads(response.content)["data"]["id"]
        return job_id

    async def bulk_create_events(self, body: dict[str, Any]) -> None:
        await self.send("event-bulk-create-jobs", "POST", "/api/event-bulk-create-jobs", body)

    async def import_job(self, job_id: str) -> dict[str, Any]:
        path = f"/api/profile-bulk-import-jobs/{quote(job_id, safe='')}"
        response = await self.send("profile-bulk-import-job", "GET", path, None)
        attributes: dict[str, Any] = orjson.loads(response.content)["data"]["attributes"]
        return attributes

    async def import_errors(self, job_id: str) -> list[dict[str, Any]]:
        """Every import-error row of a finished job, all pages."""
        rows: list[dict[str, Any]] = []
        job = quote(job_id, safe="")
        path: str | None = f"/api/profile-bulk-import-jobs/{job}/import-errors?page[size]=100"
        while path is not None:
            page = orjson.loads((await self.send("import-errors", "GET", path, None)).content)
            rows.extend(page.get("data") or [])
            following = (page.get("links") or {}).get("next")
            path = httpx.URL(following).raw_path.decode() if following else None
        return rows

    async def data_sources(self) -> list[dict[str, Any]]:
        """Every data source of the account (custom objects), all pages."""
        return await self._pages("data-sources", "/api/data-sources?page[size]=100")

    async def object_types(self) -> list[dict[str, Any]]:
        return await self._pages("object-types", "/api/object-types")

    async def object_records(self, object_type_id: str) -> list[dict[str, Any]]:
        """Every object of an object type, all pages (100 a request)."""
        path = f"/api/object-types/{quote(object_type_id, safe='')}/object-records?page[size]=100"
        return await self._pages("object-records", path)

    async def _pages(self, endpoint: str, first: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        path: str | None = first
        while path is not None:
            page = orjson.loads((await self.send(endpoint, "GET", path, None)).content)
            found.extend(page.get("data") or [])
            following = (page.get("links") or {}).get("next")
            path = httpx.URL(following).raw_path.decode() if following else None
        return found

    async def create_data_source(self, body: dict[str, Any]) -> dict[str, Any]:
        response = await self.send("data-sources", "POST", "/api/data-sources", body)
        created: dict[str, Any] = orjson.loads(response.content)["data"]
        return created

    async def create_data_source_record(self, body: dict[str, Any]) -> None:
        await self.send("data-source-record-create-jobs", "POST", "/api/data-source-record-create-jobs", body)

    async def bulk_create_data_source_records(self, body: dict[str, Any]) -> None:
        await self.send("data-source-record-bulk-create-jobs", "POST",
                        "/api/data-source-record-bulk-create-jobs", body)

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
        self, endpoint: str, method: str, path: str, body: dict[str, Any] | None, wanted: Wanted | None = None
    ) -> httpx.Response:
        """`wanted`, asked before every attempt (after the budget let it through): False raises
        `Abandoned` without sending. For a request that must finish once sent but must not be sent
        late, after its caller gave it up (delivery's bulk profile imports)."""
        content = encode(body) if body is not None else None
        seconds = BULK_TIMEOUT if content is not None and len(content) > 1_000_000 else None
        attempt, probing = 0, False
        try:
            while True:
                if not probing:
                    probing = await self.auth.wait_open()
                async with self._sending(endpoint):
                    # Paused while this one queued for a slot or a token: back to waiting.
                    paused = self.auth.paused and not probing
                    if wanted is not None and not wanted():
                        raise Abandoned(f"{endpoint}: given up before it was sent")
                    response = None if paused else await self._attempt(
                        endpoint, method, path, content, seconds)
                if paused:
                    continue
                if response is None:  # no answer: timeout or dropped connection
                    self._give_up_if_exhausted(attempt, None, "no response")
                    await self._wait(endpoint, attempt, None)
                    attempt += 1
                    continue
                status = response.status_code
                if status in AUTH_STATUSES:
                    probing = probing or self.auth.claim_probe()
                    if probing:
                        log.error("klaviyo auth failed status=%s endpoint=%s: account paused, probing "
                                  "again in %.0fs", status, endpoint, self.auth.pause)
                        await asyncio.sleep(self.auth.pause)
                    continue
                if probing:
                    probing = False
                    self.auth.reopen()
                    log.info("klaviyo auth recovered endpoint=%s: account resumed", endpoint)
                if status < 300:
                    return response
                errors = _errors(response)
                detail = str(errors[0].get("detail", response.reason_phrase) if errors
                             else response.reason_phrase)
                if status not in RETRYABLE_STATUSES:
                    raise KlaviyoRejected(status, detail, errors)
                self._give_up_if_exhausted(attempt, status, detail)
                if status == 429:
                    metrics.KLAVIYO_RATE_LIMITED.labels(endpoint).inc()
                    await self._throttled(endpoint, _retry_after(response))
                else:
                    await self._wait(endpoint, attempt, _retry_after(response))
                attempt += 1
        finally:
            if probing:
                self.auth.abandon_probe()

    @contextlib.asynccontextmanager
    async def _sending(self, endpoint: str) -> AsyncIterator[None]:
        slot = self._slots.get(endpoint)
        if slot is None:
            slot = self._slots[endpoint] = asyncio.Semaphore(CONCURRENCY.get(endpoint, DEFAULT_CONCURRENCY))
        async with slot:
            budget = self.budgets.get(endpoint)
            if budget is not None:
                await budget.acquire()
            yield

    async def _attempt(
        self, endpoint: str, method: str, path: str, content: bytes | None, seconds: float | None
    ) -> httpx.Response | None:
        started = time.monotonic()
        try:
            extra: dict[str, Any] = {"timeout": seconds} if seconds is not None else {}
            response = await self._http.request(method, path, content=content, **extra)
        except httpx.TransportError as exc:
            # The request may or may not have landed; every write is idempotent, so retry.
            metrics.KLAVIYO_REQUESTS.labels(endpoint, "error").inc()
            log.info("klaviyo no response endpoint=%s error=%s", endpoint, type(exc).__name__)
            return None
        finally:
            metrics.KLAVIYO_REQUEST_SECONDS.labels(endpoint).observe(time.monotonic() - started)
        metrics.KLAVIYO_REQUESTS.labels(endpoint, str(response.status_code)).inc()
        return response

    def _give_up_if_exhausted(self, attempt: int, status: int | None, detail: str) -> None:
        if self.retry.max_attempts is not None and attempt + 1 >= self.retry.max_attempts:
            raise KlaviyoError(status, f"gave up after {attempt + 1} attempts: {detail}")

    async def _throttled(self, endpoint: str, retry_after: float | None) -> None:
        """Nothing goes to this endpoint before Retry-After; the budget makes everyone wait."""
        metrics.KLAVIYO_RETRIES.labels(endpoint).inc()
        wait = retry_after if retry_after is not None else 1.0
        log.info("klaviyo throttled endpoint=%s retry_after=%.0fs", endpoint, wait)
        budget = self.budgets.get(endpoint)
        if budget is not None:
            budget.block_for(wait)
        else:
            await asyncio.sleep(wait)

    async def _wait(self, endpoint: str, attempt: int, retry_after: float | None) -> None:
        metrics.KLAVIYO_RETRIES.labels(endpoint).inc()
        delay = self.retry.delay(attempt, retry_after)
        log.info("klaviyo retry endpoint=%s attempt=%d delay=%.2fs", endpoint, attempt + 1, delay)
        await asyncio.sleep(delay)


class Abandoned(Exception):
    """A request its caller gave up while it waited for its turn: never sent."""


Wanted = Callable[[], bool]


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
