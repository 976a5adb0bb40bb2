"""The package's imports point one way, from the command line down to clients and warehouse.

Every import counts, also one inside a function: an import deferred to keep Prefect off
`--help` is fine, one deferred to dodge a cycle is a cycle. A new module must be given a layer
here, which is the moment to decide where it belongs (README "Where to find things").
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("bullphish_billing", "flows", "tasks")

# bottom to top; a module may import its own layer and the layers below
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "foundation",
        (
            "bullphish_billing",
            "bullphish_billing.text",
            "bullphish_billing.errors",
            "bullphish_billing.dates",
            "bullphish_billing.crashpoints",
            "bullphish_billing.terminal",
            "bullphish_billing.cli_progress",
            "bullphish_billing.validation",
            "bullphish_billing.results",
            "bullphish_billing.stopping",
        ),
    ),
    (
        "clients, warehouse and sandbox",
        ("bullphish_billing.clients", "bullphish_billing.warehouse", "bullphish_billing.sandbox"),
    ),
    (
        "rules, extract, delivery, publishing",
        (
            "bullphish_billing.lease",
            "bullphish_billing.settings",
            "bullphish_billing.billing_rules",
            "bullphish_billing.extract",
            "bullphish_billing.staging",
            "bullphish_billing.shards",
            "bullphish_billing.mappings",
            "bullphish_billing.delivery",
            "bullphish_billing.reconciliation",
            "bullphish_billing.notable",
            "bullphish_billing.stale_targets",
            "bullphish_billing.target_fates",
            "bullphish_billing.retention",
            "bullphish_billing.publish",
            "bullphish_billing.outcomes",
            "bullphish_billing.reporting",
            "bullphish_billing.partner_artifacts",
            "bullphish_billing.explain",
        ),
    ),
    (
        "stages",
        (
            "bullphish_billing.run_context",
            "bullphish_billing.stages",
            "bullphish_billing.backfill",
            "bullphish_billing.backfill_runner",
        ),
    ),
    ("Prefect tasks and flows", ("tasks", "flows")),
    (
        "command line",
        (
            "bullphish_billing.commands",
            "bullphish_billing.prefect_server",
            "bullphish_billing._server_guard",
            "bullphish_billing.demo",
            "bullphish_billing.alerts",
            "bullphish_billing.cli",
            "bullphish_billing.__main__",
        ),
    ),
)


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """The modules of ours that `name` imports, anywhere in its text."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    wanted: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            wanted |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            named = {f"{base}.{alias.name}" for alias in node.names}
            modules = {m for m in named if m in MODULES}
            wanted |= modules or {base}
    ours = set()
    for target in wanted:
        while target and target not in MODULES:
            target = target.rpartition(".")[0]
        if target and target != name:
            ours.add(target)
    return ours


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _layer(module: str) -> int | None:
    """The layer of `module`: the longest name of a layer that is the module or holds it."""
    holders = [
        (len(name), index)
        for index, (_, names) in enumerate(LAYERS)
        for name in names
        if module == name or module.startswith(name + ".")
    ]
    return max(holders)[1] if holders else None


def test_the_graph_is_read() -> None:
    # a reader that finds nothing would pass everything below
    assert "bullphish_billing.stages" in GRAPH["tasks.billing"]
    assert "bullphish_billing.clients.errors" in GRAPH["bullphish_billing.clients.retry"]
    assert "bullphish_billing.warehouse.db" in GRAPH["bullphish_billing.lease"]


def test_every_module_has_a_layer() -> None:
    missing = sorted(m for m in MODULES if _layer(m) is None)
    assert not missing, f"give these modules a layer in LAYERS: {missing}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down(module: str) -> None:
    mine = _layer(module)
    up = sorted(
        f"{dep} ({LAYERS[_layer(dep)][0]})"
        for dep in GRAPH[module]
        if _layer(dep) is not None and mine is not None and _layer(dep) > mine
    )
    assert not up, f"{module} ({LAYERS[mine][0]}) imports a layer above it: {up}"


def _cycle() -> list[str] | None:
    """One import cycle of the package, as the modules around it, or None."""
    state: dict[str, int] = {}  # 1 on the path, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in sorted(GRAPH[node]):
            if state.get(dep) == 1:
                return [*path[path.index(dep) :], dep]
            if dep not in state and (found := visit(dep)):
                return found
        path.pop()
        state[node] = 2
        return None

    for module in sorted(GRAPH):
        if module not in state and (found := visit(module)):
            return found
    return None


def test_no_import_cycle() -> None:
    cycle = _cycle()
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_a_cycle_is_found() -> None:
    # the detector itself: a back edge added to the real graph is reported
    GRAPH["bullphish_billing.text"].add("bullphish_billing.errors")
    try:
        assert _cycle() is not None
    finally:
        GRAPH["bullphish_billing.text"].discard("bullphish_billing.errors")
