"""/_sandbox/: inspection and fault injection for tests and operators.

No authentication: the sandbox is a loopback tool, and tests must be able to look at what
a client did without holding its key. Plain JSON, `{"data": ...}`, never Klaviyo-shaped,
so nobody mistakes these for Klaviyo endpoints.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import orjson
from aiohttp import web

from klaviyo_sandbox import data_sources
from klaviyo_sandbox.api import ENDPOINTS
from klaviyo_sandbox.faults import FaultBook, FaultError
from klaviyo_sandbox.merge import normalise_email
from klaviyo_sandbox.store import REQUEST_LOG_MAX, Account, RequestRecord, Store

logger = logging.getLogger("returnsync.sandbox")
PREFIX = "/_sandbox"


def _route_pattern(template: str) -> re.Pattern[str]:
    parts = ("[^/]+" if part.startswith("{") else re.escape(part) for part in template.split("/"))
    return re.compile("^" + "/".join(parts) + "/?$")


# Request paths back to the routes they hit ("/api/profile-bulk-import-jobs/{job_id}"), so that
# counts per endpoint do not split by resource id; either spelling of the trailing slash.
_ROUTES = [(endpoint.method, _route_pattern(endpoint.path), endpoint.path) for endpoint in ENDPOINTS.values()]


def route_of(method: str, path: str) -> str:
    """`METHOD /api/route/{template}` for a logged request; the bare path when no route matches."""
    for route_method, pattern, template in _ROUTES:
        if route_method == method and pattern.match(path):
            return f"{method} {template}"
    return f"{method} {path}"


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
            web.delete(f"{PREFIX}/faults/{{fault_id}}", self.clear_fault),
            web.get(f"{PREFIX}/profiles", self.profiles),
            web.post(f"{PREFIX}/profiles", self.plant_profile),
            web.get(f"{PREFIX}/events", self.events),
            web.get(f"{PREFIX}/jobs", self.jobs),
            web.get(f"{PREFIX}/data-sources", self.data_sources),
            web.post(f"{PREFIX}/object-types", self.add_object_type),
            web.get(f"{PREFIX}/requests", self.requests),
            web.get(f"{PREFIX}/counts", self.counts),
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

    async def clear_fault(self, request: web.Request) -> web.Response:
        fault_id = request.match_info["fault_id"]
        if not self._faults.clear(fault_id):
            raise _problem(404, f"no active fault {fault_id!r}")
        return _json({"data": {"cleared": 1}})

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

    async def data_sources(self, request: web.Request) -> web.Response:
        """Every data source with its ingested records; `key=FIELD` adds the latest record per
        value of FIELD (what an object type identified by FIELD shows)."""
        account = self._account(request.query.get("account"))
        key = request.query.get("key")
        sources = account.data_sources.values()
        return _json({"data": [data_sources.inspect(source, key) for source in sources]})

    async def add_object_type(self, request: web.Request) -> web.Response:
        """Stand in for the merchant's mapping in Klaviyo's UI: `{"title", "data_source" (id),
        "key" (the record field identifying an object), "account"}`."""
        body = await _body(request)
        title, source, key = body.get("title"), body.get("data_source"), body.get("key")
        if not all(isinstance(value, str) and value for value in (title, source, key)):
            raise _problem(400, "need title, data_source (id) and key (strings)")
        account = self._account(body.get("account"))
        try:
            made = data_sources.add_object_type(account, str(title), str(source), str(key))
        except KeyError:
            raise _problem(404, f"no data source {source!r}") from None
        return _json({"data": {"id": made.id, "title": made.title, "key": made.key}}, 201)

    async def requests(self, request: web.Request) -> web.Response:
        account = request.query.get("account")
        records = [asdict(r) for r in self._store.requests if account is None or r.account == account]
        return _json({"data": records})

    async def counts(self, request: web.Request) -> web.Response:
        """Sizes without the contents: what a benchmark or a large test needs to check a run.

        Store counts are for one account (default "default"); request counts come from the
        request log (its newest REQUEST_LOG_MAX entries), for that account when one is named,
        else for every request, like /requests.
        """
        name = request.query.get("account")
        account = self._account(name)
        log = [r for r in self._store.requests if name is None or r.account == name]
        return _json({"data": {
            "account": account.name,
            "profiles": len(account.profiles),
            "events": len(account.events),
            "jobs": len(account.jobs),
            "data_source_records": sum(len(source.records) for source in account.data_sources.values()),
            "requests": _request_counts(log),
            "violations": len(self._store.violations),
        }})

    async def violations(self, request: web.Request) -> web.Response:
        return _json({"data": [asdict(v) for v in self._store.violations]})

    async def reset(self, request: web.Request) -> web.Response:
        body = await _body(request)
        account = body.get("account") or request.query.get("account")
        if account is not None:
            self._account(account)
        self._reset(account)
        return _json({"data": {"reset": account or "all"}})


def _request_counts(log: list[RequestRecord]) -> dict[str, Any]:
    by_route: Counter[str] = Counter()
    by_status: Counter[str] = Counter()
    items: Counter[str] = Counter()
    for record in log:
        route = route_of(record.method, record.path)
        by_route[route] += 1
        by_status[str(record.status)] += 1
        items[route] += record.items
    return {"total": len(log), "by_endpoint": dict(sorted(by_route.items())),
            "by_status": dict(sorted(by_status.items())), "items_by_endpoint": dict(sorted(items.items())),
            "log_full": len(log) >= REQUEST_LOG_MAX}
