"""The package's import graph: acyclic, with its leaves and its libvirt boundary where they belong.

Each module of ``src/guestload`` is parsed (not imported) and every ``import`` statement in it
counts: at module level, under ``TYPE_CHECKING`` and inside functions alike, since a cycle
through a type-only or deferred import is still two modules that each need the other. ``from
guestload.x import y`` is an edge to ``guestload.x.y`` where that is a module, else to
``guestload.x``. A package's ``__init__`` counts only where it is named itself.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[2] / "src" / "guestload"

LEAVES = ("guestload.metricspec", "guestload.simulation")
"""Modules that import nothing of guestload: the description of a metric family, which the
queries, the host stats, the registration and the exposition all read, and the description of a
simulation, which the settings read without depending on the simulated source."""

KNOWN_CYCLES: frozenset[frozenset[str]] = frozenset()
"""Cycles tolerated until a redesign removes them (each with the reason beside it): none."""

LIBVIRT_MODULES = frozenset({"libvirt", "libvirt_qemu"})


def _modules() -> dict[str, Path]:
    """Module name -> file, for every module of the package."""
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


MODULES = _modules()


def _imported(name: str, path: Path) -> set[str]:
    """Every module ``name``'s file imports, guestload's or not, at any depth.

    ``from a import b`` names ``a.b`` where that is a module of the package, else ``a``.
    """
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    imported: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = parts[: len(parts) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            for alias in node.names:
                submodule = f"{module}.{alias.name}"
                imported.add(submodule if submodule in MODULES else module)
    return imported


GRAPH = {
    name: {other for other in _imported(name, path) if other in MODULES} - {name}
    for name, path in MODULES.items()
}
"""guestload module -> the guestload modules it imports."""


def _cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(frozenset(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _reachable(start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for target in GRAPH[todo.pop()] - seen:
            seen.add(target)
            todo.append(target)
    return seen


def test_the_graph_is_read_from_the_package() -> None:
    assert "guestload.exposition.schema" in GRAPH
    assert "guestload.metricspec" in GRAPH["guestload.queries.query"]
    # A TYPE_CHECKING import is an edge too.
    assert "guestload.queries.query" in GRAPH["guestload.exposition.schema"]


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [frozenset({"a", "b", "c"})]


def test_the_import_graph_has_no_cycle() -> None:
    cycles = set(_cycles(GRAPH))
    assert cycles - KNOWN_CYCLES == set(), "import cycles: " + "; ".join(
        " <-> ".join(sorted(cycle)) for cycle in cycles - KNOWN_CYCLES
    )
    assert KNOWN_CYCLES - cycles == set(), "a known cycle is gone: remove it from KNOWN_CYCLES"


@pytest.mark.parametrize("leaf", LEAVES)
def test_a_leaf_imports_nothing_of_guestload(leaf: str) -> None:
    imported = {
        name
        for name in _imported(leaf, MODULES[leaf])
        if name == "guestload" or name.startswith("guestload.")
    }
    assert imported == set()


def test_the_metric_description_is_shared_not_borrowed() -> None:
    """Queries and host stats describe their families with the leaf, not with the exposition."""
    for name, deps in GRAPH.items():
        if name.startswith(("guestload.queries.", "guestload.hoststats.")):
            assert not {dep for dep in deps if dep.startswith("guestload.exposition")}, name


def test_the_settings_depend_on_no_source() -> None:
    sources = {
        name for name in _reachable("guestload.settings") if name.startswith("guestload.sources")
    }
    assert sources == set()


def test_only_the_sources_import_libvirt() -> None:
    outside = {
        name: sorted(LIBVIRT_MODULES & set(_imported(name, path)))
        for name, path in MODULES.items()
        if not name.startswith("guestload.sources.")
    }
    assert {name: found for name, found in outside.items() if found} == {}
