"""The HTTP contract (agents/worker/openapi.json): a valid OpenAPI 3.1 document, installed with the
package, served as is at GET /openapi.json, and naming exactly the routes the worker registers.

The worker is built (not started: no broker is needed to register routes) and its aiohttp router read
after Faust applied its own blueprints, so a route added anywhere shows up here.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from aiohttp.test_utils import TestClient, TestServer

from agents.kafka import KafkaConnection
from agents.settings import Settings
from agents.worker.app import build_app
from agents.worker.runtime import Runtime
from agents.worker.views import openapi_document
from streams.events import event_from_dict

REPO = Path(__file__).resolve().parents[3]
FAUST_BUILTINS = "faust.web.apps."
"""Faust's own introspection blueprints (/, /router/...): Faust's, not the contract's."""
METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    settings = Settings(app_id="openapi-contract", partitions=2, data_dir=tmp_path_factory.mktemp("data"))
    runtime = build_app(settings, KafkaConnection("127.0.0.1:1"))
    runtime.app.web.init_server()  # applies Faust's blueprints, as starting the web server does
    yield runtime


def document() -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(openapi_document())
    return parsed


def documented_operations(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method.upper(), path)
            for path, item in doc["paths"].items() for method in item if method in METHODS}


def served_routes(runtime: Runtime) -> dict[tuple[str, str], str]:
    """(method, path) -> module of the view answering it; HEAD left out (every Faust view has it:
    GET's answer for GET views, 405 for the others)."""
    web: Any = runtime.app.web
    return {
        (route.method, route.resource.canonical): type(web.views[route.resource.canonical]).__module__
        for route in web.web_app.router.routes()
        if route.method != "HEAD"
    }


def test_the_document_is_valid_openapi_3_1() -> None:
    doc = document()
    assert doc["openapi"].startswith("3.1.")
    schema = schemathesis.openapi.from_dict(doc)
    schema.validate()  # against the OpenAPI 3.1 meta-schema; raises on the first violation
    assert [result.ok().label for result in schema.get_all_operations()]  # every operation resolves


def test_a_broken_document_is_caught_by_the_same_validation() -> None:
    doc = document()
    doc["paths"]["/health"]["get"]["responses"]["200"]["content"] = "not a media type map"
    with pytest.raises(Exception, match="is not of type"):
        schemathesis.openapi.from_dict(doc).validate()


def test_every_route_the_worker_registers_is_documented_and_every_documented_one_registered(
    runtime: Runtime,
) -> None:
    routes = served_routes(runtime)
    ours = {route for route, module in routes.items() if module.startswith("agents.")}
    assert ours == documented_operations(document()), (
        f"registered, undocumented: {sorted(ours - documented_operations(document()))}; "
        f"documented, not registered: {sorted(documented_operations(document()) - ours)}")
    others = {route: module for route, module in routes.items() if route not in ours}
    assert all(module.startswith(FAUST_BUILTINS) for module in others.values()), (
        f"routes neither returnsync's (documented) nor Faust's own: {others}")
    # Faust's /table/<table>/<key> served a customer's state without the customers token: only
    # its index page and /router/ (which worker owns which partition, no customer data) may stay.
    left = {path for _, path in others if path != "/" and not path.startswith("/router/")}
    assert not left, f"Faust introspection routes left on: {sorted(left)}"


def test_every_documented_answer_of_the_webhook_and_events_edge_is_there() -> None:
    """The status codes agents/worker/webhooks.py promises in its docstring."""
    paths = document()["paths"]
    assert set(paths["/webhooks/{source}"]["post"]["responses"]) == {
        "200", "400", "401", "403", "404", "413", "431", "503"}
    assert set(paths["/events"]["post"]["responses"]) == {"202", "400", "401", "403", "413", "503"}
    assert paths["/webhooks/{source}"]["post"]["parameters"][0]["schema"]["enum"] == [
        "loop", "redo", "swap", "shopify", "aftership"]


async def test_the_worker_serves_the_kept_document_as_json(runtime: Runtime) -> None:
    async with TestClient(TestServer(runtime.app.web.web_app)) as client:  # type: ignore[attr-defined]
        response = await client.get("/openapi.json")
        assert response.status == 200
        assert response.content_type == "application/json"
        assert await response.read() == (REPO / "agents/worker/openapi.json").read_bytes()


def test_the_document_is_package_data_so_every_install_has_it() -> None:
    """`pip install .` (the image) and `pip install -e .` both ship what setuptools' package-data names."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "openapi.json" in config["package-data"]["agents.worker"]
    assert any("agents" in pattern for pattern in config["packages"]["find"]["include"])


def test_the_documented_event_examples_are_events_the_worker_accepts() -> None:
    content = document()["paths"]["/events"]["post"]["requestBody"]["content"]["application/json"]
    bodies = [example["value"] for example in content["examples"].values()]
    items = [item for body in bodies for item in (body if isinstance(body, list) else [body])]
    assert len(items) >= 2 and any(isinstance(body, list) for body in bodies)
    assert [event_from_dict(item).event_id for item in items] == [item["event_id"] for item in items]
