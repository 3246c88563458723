"""The layout's rules, checked on the source so a regression fails CI rather than a reader:
imports point one way and never in a circle, no module reaches into another's private names, and
each folder imports only what its role allows."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("streams", "agents", "klaviyo_sandbox")


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = modules()


def imports(path: Path) -> Iterator[tuple[str, list[str], int]]:
    """(module imported, names taken from it, line) for every import, at any depth."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [alias.name for alias in node.names]
            submodules = [f"{node.module}.{name}" for name in names if f"{node.module}.{name}" in MODULES]
            taken = [name for name in names if f"{node.module}.{name}" not in MODULES]
            if taken or not submodules:  # `from agents import metrics` imports agents.metrics alone
                yield node.module, taken, node.lineno
            for submodule in submodules:
                yield submodule, [], node.lineno
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, [], node.lineno


def graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {module: set() for module in MODULES}
    for module, path in MODULES.items():
        for target, _names, _line in imports(path):
            if target in MODULES and target != module:
                edges[module].add(target)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in edges[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in edges:
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle_at_any_depth() -> None:
    """Function-local imports count too: one used to dodge a cycle is still a cycle."""
    assert cycles(graph()) == []


def test_no_module_imports_another_modules_private_names() -> None:
    offenders = [
        f"{path.relative_to(REPO)}:{line} takes {name} from {target}"
        for module, path in MODULES.items()
        for target, names, line in imports(path)
        if target in MODULES and target != module
        for name in names
        if name.startswith("_") and not name.startswith("__")
    ]
    assert offenders == []


# What each folder may import, by prefix; everything else of ours is out of bounds.
ALLOWED = {
    "streams": ("streams",),
    "klaviyo_sandbox": ("klaviyo_sandbox", "streams"),
    "agents.klaviyo": ("agents.klaviyo", "agents.metrics", "agents.kafka", "agents.offsets",
                       "agents.settings", "agents.topic_plan", "streams"),
    "agents.worker": ("agents.worker", "agents.klaviyo", "agents.metrics", "agents.kafka", "agents.offsets",
                      "agents.settings", "agents.topic_plan", "agents.topic_admin", "agents.deadletters",
                      "agents.logs", "streams"),
    "agents.commands": ("agents", "klaviyo_sandbox", "streams"),
    "agents.devstack": ("agents.devstack", "agents.commands.publish", "agents.kafka", "agents.settings",
                        "streams"),
}


def test_each_folder_imports_only_what_its_role_allows() -> None:
    offenders = []
    for module, path in MODULES.items():
        rule = next((prefix for prefix in sorted(ALLOWED, key=len, reverse=True)
                     if module == prefix or module.startswith(prefix + ".")), None)
        if rule is None:
            continue
        for target, _names, line in imports(path):
            ours = target.split(".")[0] in PACKAGES
            allowed = ALLOWED[rule]
            if ours and not any(target == prefix or target.startswith(prefix + ".") for prefix in allowed):
                offenders.append(f"{path.relative_to(REPO)}:{line} ({rule}) imports {target}")
    assert offenders == []


def test_processors_never_import_the_app_that_wires_them() -> None:
    wired = [module for module, targets in graph().items()
             if "agents.worker.app" in targets and module not in ("agents.worker.run",)]
    assert wired == []


def test_nothing_reads_outside_the_repository() -> None:
    """A clone stands alone: no code, script, benchmark or test reaches above the repository
    (what was read from a sibling folder is vendored, klaviyo_sandbox/reference/)."""
    reaching = []
    for folder in (*PACKAGES, "scripts", "benchmarks", "tests"):
        for path in sorted((REPO / folder).rglob("*.py")):
            text = path.read_text()
            for needle in ("REPO.parent", "../shared", '"shared"'):
                if needle in text and path != Path(__file__):
                    reaching.append(f"{path.relative_to(REPO)}: {needle}")
    assert not reaching, reaching
