"""The Klaviyo client's outcomes: Retry-After honoured, transient failures retried, permanent ones
typed, 401/403 pausing the account with one probe instead of failing requests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import httpx
import pytest

from agents.klaviyo.client import KlaviyoClient, KlaviyoRejected, RetryPolicy
from agents.klaviyo.ratelimit import Budgets

BODY = {"data": {"type": "event"}}
Handler = Callable[[httpx.Request], httpx.Response]


def client(handler: Handler, **options: object) -> KlaviyoClient:
    options.setdefault("retry", RetryPolicy(base_delay=0.01, max_delay=0.02))
    return KlaviyoClient(api_key="pk_test", base_url="http://klaviyo.test", revision="2026-07-15",
                         transport=httpx.MockTransport(handler), **options)  # type: ignore[arg-type]


async def test_429_blocks_the_endpoint_until_retry_after_for_every_request() -> None:
    seen: list[tuple[float, str, int]] = []
    throttled_until = [0.0]

    def handler(request: httpx.Request) -> httpx.Response:
        now = time.monotonic()
        if request.url.path == "/api/events" and not seen:
            throttled_until[0] = now + 1
            seen.append((now, request.url.path, 429))
            throttle = {"errors": [{"detail": "throttled"}]}
            return httpx.Response(429, headers={"Retry-After": "1"}, json=throttle)
        seen.append((now, request.url.path, 202))
        return httpx.Response(202)

    klaviyo = client(handler, budgets=Budgets())
    first = asyncio.ensure_future(klaviyo.create_event(BODY))
    await asyncio.sleep(0.1)
    started = time.monotonic()
    await asyncio.gather(first, *(klaviyo.create_event(BODY) for _ in range(5)), klaviyo.import_profile(BODY))
    await klaviyo.aclose()
    events = [at for at, path, status in seen if path == "/api/events" and status == 202]
    assert len(events) == 6 and min(events) >= throttled_until[0]
    profile = [at for at, path, _ in seen if path == "/api/profile-import"]
    assert profile and profile[0] < started + 0.5, "another endpoint is not held up by the block"


async def test_transient_failures_and_dropped_connections_are_retried() -> None:
    answers = iter(["drop", 503, 500, 502, 504, 202])

    def handler(request: httpx.Request) -> httpx.Response:
        answer = next(answers)
        if answer == "drop":
            raise httpx.RemoteProtocolError("connection dropped", request=request)
        return httpx.Response(int(answer))

    klaviyo = client(handler)
    await klaviyo.create_event(BODY)
    await klaviyo.aclose()
    assert next(answers, None) is None


@pytest.mark.parametrize("status", [400, 404, 409, 413, 415, 422])
async def test_permanent_errors_are_not_retried_and_carry_klaviyos_detail(status: int) -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(status, json={"errors": [{"status": status, "code": "x", "detail": "Nope."}]})

    klaviyo = client(handler)
    with pytest.raises(KlaviyoRejected) as info:
        await klaviyo.import_profile(BODY)
    await klaviyo.aclose()
    assert len(calls) == 1
    assert (info.value.status, info.value.detail) == (status, "Nope.")
    assert info.value.errors == [{"status": status, "code": "x", "detail": "Nope."}]


async def test_401_pauses_the_account_one_probe_at_a_time_until_the_key_works() -> None:
    key_works = asyncio.Event()
    calls: list[float] = []
    changes: list[bool] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(time.monotonic())
        return httpx.Response(202 if key_works.is_set() else 401, json={"errors": [{"detail": "bad key"}]})

    klaviyo = client(handler, auth_pause_seconds=0.2, on_auth_change=changes.append)
    sending = asyncio.gather(*(klaviyo.create_event(BODY) for _ in range(20)))
    await asyncio.sleep(1.0)
    failed_calls = len(calls)
    assert klaviyo.auth.paused and changes == [True]
    # 20 requests, ~1 s of 0.2 s pauses: the first wave plus about one probe per pause.
    assert failed_calls <= 20 + 7
    key_works.set()
    await asyncio.wait_for(sending, 5)
    await klaviyo.aclose()
    assert changes == [True, False] and not klaviyo.auth.paused
    assert len(calls) - failed_calls >= 20


async def test_a_cancelled_probe_hands_probing_to_a_waiting_request() -> None:
    key_works = asyncio.Event()

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(202 if key_works.is_set() else 403)

    klaviyo = client(handler, auth_pause_seconds=0.1)
    first = asyncio.ensure_future(klaviyo.create_event(BODY))
    await asyncio.sleep(0.05)
    second = asyncio.ensure_future(klaviyo.create_event(BODY))
    await asyncio.sleep(0.05)
    first.cancel()
    key_works.set()
    await asyncio.wait_for(second, 3)
    await klaviyo.aclose()
    assert not klaviyo.auth.paused


async def test_requests_queued_for_a_slot_do_not_slip_out_while_paused() -> None:
    """A 401 closes the gate for requests that already passed it and wait for a connection slot."""
    key_works = asyncio.Event()
    accepted_while_paused = []

    async def handler(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.01)
        if b"blocked" in request.content and not key_works.is_set():
            return httpx.Response(401)
        if not key_works.is_set():
            accepted_while_paused.append(request)
        return httpx.Response(202)

    klaviyo = client(handler, auth_pause_seconds=0.2)  # type: ignore[arg-type]
    bodies = [{"data": {"blocked": True}}] + [BODY] * 99
    sending = asyncio.gather(*(klaviyo.create_event(body) for body in bodies))
    await asyncio.sleep(0.6)
    key_works.set()
    await asyncio.wait_for(sending, 5)
    await klaviyo.aclose()
    assert len(accepted_while_paused) < 32, "only requests already in flight when the 401 came"
