"""The Klaviyo sandbox: a real HTTP server speaking the slice of Klaviyo's API returnsync uses.

Every /api request passes one pipeline: consent-endpoint recording, injected faults,
authentication, consent refusal, routing, rate limits, `revision`, media type, size, JSON,
consent fields, then the handler. Consent attempts are recorded first so that neither a
fault nor a bad key can hide one; faults come before authentication so a test can stage an
outage whatever the client sends; rate limits count every authenticated routed request,
valid or not, as Klaviyo's do.
"""

from __future__ import annotations

import asyncio
import logging
import re
import signal
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from klaviyo_sandbox.admin import PREFIX, SandboxAdmin
from klaviyo_sandbox.api import ENDPOINTS, EXCHANGE, Exchange, KlaviyoApi, api_response
from klaviyo_sandbox.checks import api_key, check_revision, peek_json, read_json
from klaviyo_sandbox.errors import ApiError, duplicate_profile, invalid, throttled
from klaviyo_sandbox.faults import Fault, FaultBook, emails_in
from klaviyo_sandbox.ratelimit import Limit, RateLimiter
from klaviyo_sandbox.rules import consent_fields
from klaviyo_sandbox.store import Account, ConsentViolation, ImportJob, RequestRecord, Store, new_id, now_iso
from klaviyo_sandbox.validation import catalog

logger = logging.getLogger("returnsync.sandbox")
DEFAULT_API_KEYS = {"sandbox-key": "default"}
READ_LIMIT_BYTES = 16 * 1024 * 1024  # above every Klaviyo limit, so Klaviyo's 413s are ours to give
# Subscribe, unsubscribe, suppress, consent: returnsync must never reach any of them (SPEC §5).
_CONSENT_PATH = re.compile(r"subscription|suppression|consent", re.IGNORECASE)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class SandboxServer:
    def __init__(
        self,
        *,
        api_keys: Mapping[str, str] | None = None,
        rate_limit_scale: float = 1.0,
        host: str = "127.0.0.1",
        port: int = 0,
        job_delay: float = 0.2,
    ) -> None:
        self._api_keys = dict(api_keys if api_keys is not None else DEFAULT_API_KEYS)
        if not self._api_keys:
            raise ValueError("the sandbox needs at least one API key")
        self._host, self._port, self._job_delay = host, port, job_delay
        self.store = Store(self._api_keys.values())
        limits = {op: Limit(s.burst_per_second, s.steady_per_minute) for op, s in catalog().items()}
        self.limiter = RateLimiter(limits, rate_limit_scale)
        self.faults = FaultBook()
        self._runner: web.AppRunner | None = None
        self._url: str | None = None
        self._jobs: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        if self._url is None:
            raise RuntimeError("sandbox not started")
        return self._url

    def profiles(self, account: str = "default") -> list[dict[str, Any]]:
        return [profile.inspect() for profile in self.store.account(account).profiles.values()]

    def events(self, account: str = "default") -> list[dict[str, Any]]:
        return [event.inspect() for event in self.store.account(account).events]

    async def start(self) -> str:
        if self._runner is not None:
            return self.url
        runner = web.AppRunner(self.build_app(), access_log=None, handle_signals=False)
        await runner.setup()
        await web.TCPSite(runner, self._host, self._port).start()
        port = runner.addresses[0][1]
        host = "127.0.0.1" if self._host in ("", "0.0.0.0") else self._host  # noqa: S104
        host = f"[{host}]" if ":" in host else host
        self._runner, self._url = runner, f"http://{host}:{port}"
        logger.info("sandbox.started url=%s accounts=%d", self._url, len(self.store.account_names))
        return self._url

    async def stop(self) -> None:
        self._cancel_jobs()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
            logger.info("sandbox.stopped url=%s", self._url)

    def build_app(self) -> web.Application:
        app = web.Application(middlewares=[self._pipeline], client_max_size=READ_LIMIT_BYTES)
        app.add_routes(SandboxAdmin(self.store, self.faults, self.reset).routes())
        handlers = KlaviyoApi(self.store, self._schedule_job).handlers()
        for op_id, endpoint in ENDPOINTS.items():
            # Klaviyo's own links end in "/", clients often omit it: serve both spellings.
            app.router.add_route(endpoint.method, endpoint.path + "{_slash:/?}", handlers[op_id], name=op_id)
        return app

    def reset(self, account: str | None = None) -> None:
        self.store.reset(account)
        self.limiter.reset(account)
        if account is None:
            self.faults.clear()
            self._cancel_jobs()

    def _schedule_job(self, account: Account, job: ImportJob) -> None:
        task = asyncio.create_task(self._run_job(account, job))
        self._jobs.add(task)
        task.add_done_callback(self._jobs.discard)

    async def _run_job(self, account: Account, job: ImportJob) -> None:
        await asyncio.sleep(self._job_delay / 2)
        account.start_job(job)
        await asyncio.sleep(self._job_delay / 2)
        account.finish_job(job)
        logger.info("sandbox.bulk_import.complete job=%s completed=%d failed=%d",
                    job.id, job.completed_count, job.failed_count)

    def _cancel_jobs(self) -> None:
        for task in list(self._jobs):
            task.cancel()

    @web.middleware
    async def _pipeline(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith(f"{PREFIX}/"):
            return await handler(request)
        request[EXCHANGE] = Exchange(received_at=now_iso(precise=True))
        status: int | None = None
        try:
            response = await self._process(request, handler)
            status = response.status
            return response
        except ApiError as error:
            status = error.status
            return api_response(error.body(), error.status, error.headers)
        except _Dropped:
            return web.Response(status=499)  # never sent: the transport is already gone
        finally:
            self._log(request, status)

    async def _process(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        key = api_key(request)
        account = self._api_keys.get(key) if key else None
        request[EXCHANGE].account = account
        consent_endpoint = bool(_CONSENT_PATH.search(request.path))
        if consent_endpoint:
            self._violation(request, "endpoint", f"{request.method} {request.path} can change consent")
        await self._inject_fault(request)
        if not request.path.startswith("/client/"):  # client endpoints use a public key in the query
            if key is None:
                raise ApiError.single(401, "Missing or invalid Authorization header: use "
                                           "'Klaviyo-API-Key <private key>'.", code="not_authenticated")
            if account is None:
                raise ApiError.single(401, "The API key is not valid.", code="authentication_failed")
        if consent_endpoint:
            raise ApiError.single(403, "API key is missing required API scopes: subscriptions:write.")
        http_error = request.match_info.http_exception
        if http_error is not None:
            detail = f"{request.method} {request.path} is not a sandbox route."
            raise ApiError.single(http_error.status, detail)
        endpoint = ENDPOINTS[request.match_info.route.name or ""]
        decision = self.limiter.check(account or "", endpoint.operation_id)
        if decision is not None and not decision.allowed:
            logger.info("sandbox.throttled account=%s operation=%s retry_after=%d",
                        account, endpoint.operation_id, decision.retry_after)
            raise throttled(decision.retry_after)
        headers = decision.headers() if decision is not None else {}
        try:
            check_revision(request)
            if endpoint.max_body_bytes is not None:
                body = await read_json(request, endpoint.max_body_bytes)
                request[EXCHANGE].body = self._refuse_consent(request, body)
            response = await handler(request)
        except ApiError as error:
            error.headers.update(headers)
            raise
        response.headers.update(headers)
        return response

    async def _inject_fault(self, request: web.Request) -> None:
        emails: set[str] = set()
        if self.faults.wants_emails and request.can_read_body:
            emails = set(emails_in(await peek_json(request)))
        fault = self.faults.take(request.method, request.path, emails)
        if fault is None:
            return
        request[EXCHANGE].fault = fault.id
        logger.info("sandbox.fault.applied id=%s path=%s", fault.id, request.path)
        if fault.delay:
            await asyncio.sleep(fault.delay)
        if fault.drop:
            if request.transport is not None:
                request.transport.abort()
            raise _Dropped
        if fault.status is not None:
            raise self._fault_error(fault, request)

    def _fault_error(self, fault: Fault, request: web.Request) -> ApiError:
        if fault.status == 429:
            return throttled(fault.retry_after or 1)
        if fault.status == 409:
            account = self.store.accounts.get(request[EXCHANGE].account or "")
            existing = account.find("email", fault.email) if account and fault.email else None
            return duplicate_profile(existing.id if existing else new_id())
        headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else None
        detail = fault.detail or f"Injected fault {fault.id}: HTTP {fault.status}."
        return ApiError.single(fault.status or 500, detail, headers=headers)

    def _refuse_consent(self, request: web.Request, body: Any) -> Any:
        pointers = list(consent_fields(body))
        if pointers:
            self._violation(request, "field", f"consent fields in body: {', '.join(pointers)}")
            name = pointers[0].rsplit("/", 1)[-1]
            raise invalid(f"'{name}' is not a valid field here: consent can only change through the "
                          "subscription endpoints.", pointer=pointers[0])
        return body

    def _violation(self, request: web.Request, kind: str, detail: str) -> None:
        self.store.violations.append(ConsentViolation(
            now_iso(precise=True), request[EXCHANGE].account, request.method, request.path, kind, detail
        ))
        logger.warning("sandbox.consent_violation account=%s kind=%s path=%s",
                       request[EXCHANGE].account, kind, request.path)

    def _log(self, request: web.Request, status: int | None) -> None:
        exchange = request[EXCHANGE]
        record = RequestRecord(now_iso(precise=True), exchange.account, request.method, request.path,
                               status, exchange.items, exchange.fault, exchange.received_at)
        self.store.requests.append(record)
        # Path only: query strings can hold customer emails (filter=equals(email,...)).
        logger.debug("sandbox.request account=%s method=%s path=%s status=%s items=%d fault=%s",
                     record.account, record.method, record.path, status, record.items, record.fault)


class _Dropped(Exception):
    """An injected fault closed the connection; there is no response to send."""


def serve(host: str, port: int, api_keys: Mapping[str, str], rate_limit_scale: float) -> None:
    """Run the sandbox until SIGINT or SIGTERM (`returnsync sandbox`)."""
    server = SandboxServer(api_keys=api_keys, rate_limit_scale=rate_limit_scale, host=host, port=port)
    asyncio.run(_serve(server))


async def _serve(server: SandboxServer) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    url = await server.start()
    print(f"klaviyo sandbox listening url={url}", flush=True)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await server.stop()
