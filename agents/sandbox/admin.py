"""/_sandbox/: inspection and fault injection for tests and operators.

No authentication: the sandbox is a loopback tool, and tests must be able to look at what
a client did without holding its key. Plain JSON, `{"data": ...}`, never Klaviyo-shaped,
so nobody mistakes these for Klaviyo endpoints.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import orjson
from aiohttp import web

from agents.sandbox.faults import FaultBook, FaultError
from agents.sandbox.merge import normalise_email
from agents.sandbox.store import Account, Store

logger = logging.getLogger("returnsync.sandbox")
PREFIX = "/_sandbox"


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def _problem(status: int, message: str) -> web.HTTPException:
    kind = web.HTTPNotFound if status == 404 else web.HTTPBadRequest
    return kind(text=orjson.dumps({"error": message}).decode(), content_type="application/json")


async def _body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise _problem(400, "body must be JSON") from None
    if not isinstance(body, dict):
        raise _problem(400, "body must be a JSON object")
    return body


class SandboxAdmin:
    def __init__(self, store: Store, faults: FaultBook, reset: Callable[[str | None], None]) -> None:
        self._store = store
        self._faults = faults
        self._reset = reset

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post(f"{PREFIX}/faults", self.add_fault),
            web.get(f"{PREFIX}/faults", self.list_faults),
            web.delete(f"{PREFIX}/faults", self.clear_faults),
            web.get(f"{PREFIX}/profiles", self.profiles),
            web.post(f"{PREFIX}/profiles", self.plant_profile),
            web.get(f"{PREFIX}/events", self.events),
            web.get(f"{PREFIX}/jobs", self.jobs),
            web.get(f"{PREFIX}/requests", self.requests),
            web.get(f"{PREFIX}/violations", self.violations),
            web.post(f"{PREFIX}/reset", self.reset),
        ]

    def _account(self, name: str | None) -> Account:
        try:
            return self._store.account(name or "default")
        except KeyError:
            known = list(self._store.account_names)
            raise _problem(404, f"unknown account {name!r}; accounts: {known}") from None

    async def add_fault(self, request: web.Request) -> web.Response:
        try:
            fault = self._faults.add(await _body(request))
        except FaultError as error:
            raise _problem(400, str(error)) from None
        logger.info("sandbox.fault.added id=%s status=%s drop=%s delay=%s endpoint=%s count=%s",
                    fault.id, fault.status, fault.drop, fault.delay, fault.endpoint, fault.remaining)
        return _json({"data": fault.describe()}, 201)

    async def list_faults(self, request: web.Request) -> web.Response:
        return _json({"data": [fault.describe() for fault in self._faults.active()]})

    async def clear_faults(self, request: web.Request) -> web.Response:
        return _json({"data": {"cleared": self._faults.clear()}})

    async def profiles(self, request: web.Request) -> web.Response:
        account = self._account(request.query.get("account"))
        email = request.query.get("email")
        found = [p.inspect() for p in account.profiles.values()
                 if email is None or p.fields.get("email") == normalise_email(email)]
        return _json({"data": found})

    async def plant_profile(self, request: web.Request) -> web.Response:
        body = await _body(request)
        email, properties = body.get("email"), body.get("properties", {})
        if not isinstance(email, str) or not email or not isinstance(properties, dict):
            raise _problem(400, "need email (string) and properties (object)")
        account = self._account(body.get("account"))
        profile, created = account.plant(email, properties, merge=bool(body.get("merge", False)))
        return _json({"data": profile.inspect()}, 201 if created else 200)

    async def events(self, request: web.Request) -> web.Response:
        account = self._account(request.query.get("account"))
        email, metric = request.query.get("email"), request.query.get("metric")
        wanted = normalise_email(email) if email else None
        found = [e.inspect() for e in account.events
                 if wanted in (None, e.email) and metric in (None, e.metric)]
        return _json({"data": found})

    async def jobs(self, request: web.Request) -> web.Response:
        account = self._account(request.query.get("account"))
        return _json({"data": [
            {"id": job.id, "status": job.status, "total_count": job.total_count,
             "completed_count": job.completed_count, "failed_count": job.failed_count}
            for job in account.jobs.values()
        ]})

    async def requests(self, request: web.Request) -> web.Response:
        account = request.query.get("account")
        records = [asdict(r) for r in self._store.requests if account is None or r.account == account]
        return _json({"data": records})

    async def violations(self, request: web.Request) -> web.Response:
        return _json({"data": [asdict(v) for v in self._store.violations]})

    async def reset(self, request: web.Request) -> web.Response:
        body = await _body(request)
        account = body.get("account") or request.query.get("account")
        if account is not None:
            self._account(account)
        self._reset(account)
        return _json({"data": {"reset": account or "all"}})
