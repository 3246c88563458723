"""HTTP endpoints on each worker (SPEC §6): health, readiness, metrics, customer state, and the
OpenAPI document that describes them all (agents/worker/openapi.json, installed as package data)."""

from __future__ import annotations

import hmac
from importlib import resources
from typing import Any

from faust.exceptions import SameNode
from faust.web import View
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from agents import metrics
from agents.worker import webhooks
from agents.worker.runtime import Runtime
from streams.codec import decode_state
from streams.events import DEFAULT_TENANT, TENANT_PATTERN, customer_key
from streams.state import state_to_dict

# aiohttp refuses a charset inside content_type; Prometheus reads the text format without it.
METRICS_CONTENT_TYPE = CONTENT_TYPE_LATEST.split(";")[0] + "; version=0.0.4"


def openapi_document() -> bytes:
    """The HTTP contract of every route registered here and in agents/worker/webhooks.py."""
    return resources.files("agents.worker").joinpath("openapi.json").read_bytes()


def register(runtime: Runtime) -> None:
    app = runtime.app
    settings = runtime.settings
    document = openapi_document()

    @app.page("/health")
    async def health(web: Any, request: Any) -> Any:
        return web.json({"status": "ok"})

    @app.page("/ready")
    async def ready(web: Any, request: Any) -> Any:
        ok = runtime.ready()
        metrics.WORKER_READY.set(1 if ok else 0)
        return web.json({"ready": ok}, status=200 if ok else 503)

    @app.page("/metrics")
    async def scrape(web: Any, request: Any) -> Any:
        metrics.WORKER_READY.set(1 if runtime.ready() else 0)
        return web.bytes(generate_latest(metrics.REGISTRY), content_type=METRICS_CONTENT_TYPE)

    @app.page("/openapi.json")
    async def openapi(web: Any, request: Any) -> Any:
        return web.bytes(document, content_type="application/json")

    @app.page("/customers/{email}")
    class CustomerView(View):
        """Support staff look-up. Routed to the worker that owns the customer's partition."""

        async def get(self, request: Any, email: str) -> Any:
            token = settings.customer_api_token
            if token is not None:
                given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
                # surrogatepass: aiohttp hands non-UTF-8 header bytes over as surrogates.
                if not hmac.compare_digest(given.encode("utf-8", "surrogatepass"), token.encode()):
                    return self.json({"error": "unauthorized"}, status=401)
            tenant = request.query.get("tenant", DEFAULT_TENANT)
            if not TENANT_PATTERN.fullmatch(tenant):  # no state can be kept under such a tenant
                return self.json({"error": "tenant must be 1-64 of [A-Za-z0-9_.-]"}, status=400)
            key = customer_key(tenant, email)
            return await self._route(request, key)

        async def _route(self, request: Any, key: str) -> Any:
            # Faust's router answers from here when this worker owns the key, or proxies to the
            # worker that does.
            try:
                return await app.router.route_req(runtime.table.name, key, self.web, request)
            except SameNode:
                pass
            state = decode_state(runtime.table.get(key.encode()))
            if state is None:
                return self.json({"error": "no returns or orders known for this customer"}, status=404)
            body = state_to_dict(state)
            body["store_credit_balance"] = str(state.store_credit_balance)
            body["active_returns"] = [record.return_id for record in state.active_returns]
            return self.json(body)

    webhooks.register(runtime)  # POST /webhooks/{source}, POST /events
