"""The import graph of ``src/runapi_mcp``: no cycles, and no layer imports a layer above it.

The graph is read from every module's syntax tree, so every import counts: at module level, inside a
function, and under ``TYPE_CHECKING`` (an import hidden in a function still ties the two modules together;
hiding it only moves the failure from import time to the first call). Relative imports are resolved; an
import of a package is an import of its ``__init__``; ``from pkg import name`` is an import of the module
``pkg.name`` when there is one, else of ``pkg``. The parent packages Python initialises on the way to a
module are not edges: every module would otherwise be in a cycle with its own package's ``__init__``.

The layers, lowest first (each may import only its own and those before it)::

    base (clock, errors, private, redaction, wording, the package) -> config -> client -> catalog -> tasks
    -> server -> stdio -> app -> http -> commands -> cli

The simulator is an island beside them: it may import only the base and the catalog (what it knows of
RunAPI is the catalog's actions; were it to share the client's models it would agree with the client's
mistakes instead of catching them), and only the commands import it (``demo``, ``simulate``).

uvicorn is reached through one module of the server (``http/uvicorn_server.py``: it subclasses uvicorn's
``Server`` and h11 protocol, so a uvicorn release that moves those internals breaks there and nowhere else)
and one of the simulator island (``simulator/_server.py``, the island's own host). Jinja2 only through
``http/templating.py``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "runapi_mcp"

LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("base", ("runapi_mcp", *(f"runapi_mcp.{name}" for name in ("clock", "errors", "private", "redaction", "wording")))),
    ("config", ("runapi_mcp.config",)),
    ("client", ("runapi_mcp.client",)),
    ("catalog", ("runapi_mcp.catalog",)),
    ("tasks", ("runapi_mcp.tasks",)),
    ("server", ("runapi_mcp.server",)),
    ("stdio", ("runapi_mcp.stdio",)),
    ("app", ("runapi_mcp.app",)),
    ("http", ("runapi_mcp.http",)),
    ("commands", ("runapi_mcp.commands",)),
    ("cli", ("runapi_mcp.cli", "runapi_mcp.__main__")),
)
SIMULATOR = "runapi_mcp.simulator"
SIMULATOR_MAY_IMPORT = ("base", "catalog")
SIMULATOR_IMPORTED_BY = ("commands",)

# Third-party packages reached through one module of the server (and one of the simulator island).
ONE_DOOR = {
    "uvicorn": ("runapi_mcp.http.uvicorn_server", "runapi_mcp.simulator._server"),
    "jinja2": ("runapi_mcp.http.templating",),
}


@dataclass(frozen=True)
class Import:
    target: str  # a module of the package, or the top-level name of another package
    line: int


def find_modules(root: Path, package: str) -> dict[str, tuple[Path, bool]]:
    """Every module under ``root/package``: its dotted name -> (file, whether it is a package's ``__init__``)."""
    found: dict[str, tuple[Path, bool]] = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts.pop()
        found[".".join(parts)] = (path, is_package)
    return found


def imports_of(name: str, path: Path, is_package: bool, known: Mapping[str, object]) -> Iterator[Import]:
    """The imports in one module's syntax tree, wherever they stand; ours resolved to modules, others to
    their top-level package."""
    here = name if is_package else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(_ours(alias.name, known), node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split(".")[: len(here.split(".")) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                yield Import(submodule if submodule in known else _ours(source, known), node.lineno)


def _ours(dotted: str, known: Mapping[str, object]) -> str:
    """The longest known module ``dotted`` names (``import a.b.c`` of a package module), else its top level."""
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in known:
            return ".".join(parts[:end])
    return parts[0]


def import_graph(root: Path, package: str) -> dict[str, dict[str, int]]:
    """module -> {module of the package it imports: the first line that does}."""
    known = find_modules(root, package)
    graph: dict[str, dict[str, int]] = {}
    for name, (path, is_package) in known.items():
        edges: dict[str, int] = {}
        for found in imports_of(name, path, is_package, known):
            if found.target in known and found.target != name:
                edges.setdefault(found.target, found.line)
        graph[name] = edges
    return graph


def third_party_imports(root: Path, package: str) -> dict[str, dict[str, int]]:
    """module -> {top-level package outside ours it imports: the first line that does}."""
    known = find_modules(root, package)
    result: dict[str, dict[str, int]] = {}
    for name, (path, is_package) in known.items():
        outside: dict[str, int] = {}
        for found in imports_of(name, path, is_package, known):
            if found.target not in known:
                outside.setdefault(found.target, found.line)
        result[name] = outside
    return result


def strongly_connected(graph: Mapping[str, Mapping[str, int]]) -> list[list[str]]:
    """The components of more than one module (Tarjan's algorithm, without recursion)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, successors = work[-1]
            for successor in successors:
                if successor not in index:
                    index[successor] = low[successor] = len(index)
                    stack.append(successor)
                    on_stack.add(successor)
                    work.append((successor, iter(sorted(graph[successor]))))
                    break
                if successor in on_stack:
                    low[node] = min(low[node], index[successor])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component: list[str] = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        components.append(sorted(component))
    return components


def one_cycle(graph: Mapping[str, Mapping[str, int]], component: list[str]) -> list[str]:
    """A shortest cycle through the component's first module (breadth first, inside the component)."""
    start, members = component[0], set(component)
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following: list[str] = []
        for node in frontier:
            for successor in sorted(graph[node]):
                if successor == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(came_from[path[-1]])
                    return [*reversed(path), start]
                if successor in members and successor not in came_from:
                    came_from[successor] = node
                    following.append(successor)
        frontier = following
    raise AssertionError(f"no cycle through {start} in {component}")


def describe_cycles(root: Path, package: str) -> list[str]:
    """Each cycle as ``a (a.py:12) -> b (b.py:30) -> a``: the line of each module that imports the next."""
    graph = import_graph(root, package)
    known = find_modules(root, package)
    described = []
    for component in strongly_connected(graph):
        cycle = one_cycle(graph, component)
        steps = [
            f"{module} ({known[module][0].relative_to(root)}:{graph[module][cycle[i + 1]]})"
            for i, module in enumerate(cycle[:-1])
        ]
        described.append(" -> ".join([*steps, cycle[-1]]) + f"  [component: {', '.join(component)}]")
    return described


def layer_of(module: str) -> str:
    best, length = None, -1
    for layer, prefixes in ((*LAYERS, ("simulator", (SIMULATOR,)))):
        for prefix in prefixes:
            # The package itself holds only its __init__ (its modules each have a layer of their own).
            inside = prefix != PACKAGE and module.startswith(prefix + ".")
            if (module == prefix or inside) and len(prefix) > length:
                best, length = layer, len(prefix)
    assert best is not None, f"{module} is in no layer: add it to LAYERS in tests/test_imports.py"
    return best


def layering_violations(graph: Mapping[str, Mapping[str, int]], known: Mapping[str, tuple[Path, bool]]) -> list[str]:
    rank = {layer: i for i, (layer, _) in enumerate(LAYERS)}
    found = []
    for module, edges in sorted(graph.items()):
        mine = layer_of(module)
        for target, line in sorted(edges.items()):
            theirs = layer_of(target)
            where = f"{module} ({known[module][0].relative_to(SRC)}:{line}) imports {target}"
            if mine == "simulator" and theirs != "simulator" and theirs not in SIMULATOR_MAY_IMPORT:
                found.append(f"{where}: the simulator may import only {', '.join(SIMULATOR_MAY_IMPORT)}")
            elif theirs == "simulator" and mine != "simulator" and mine not in SIMULATOR_IMPORTED_BY:
                found.append(f"{where}: only {', '.join(SIMULATOR_IMPORTED_BY)} may import the simulator")
            elif "simulator" not in (mine, theirs) and rank[theirs] > rank[mine]:
                found.append(f"{where}: {mine} is below {theirs}")
    return found


# -- the package ---------------------------------------------------------------------------------------------


def test_no_module_takes_part_in_an_import_cycle() -> None:
    cycles = describe_cycles(SRC, PACKAGE)
    assert not cycles, "import cycles in src/:\n" + "\n".join(cycles)


def test_no_layer_imports_one_above_it() -> None:
    violations = layering_violations(import_graph(SRC, PACKAGE), find_modules(SRC, PACKAGE))
    assert not violations, "\n".join(violations)


@pytest.mark.parametrize("package", sorted(ONE_DOOR))
def test_a_dependency_with_fragile_internals_is_reached_through_one_module(package: str) -> None:
    importers = sorted(m for m, names in third_party_imports(SRC, PACKAGE).items() if package in names)
    assert importers == sorted(ONE_DOOR[package])


# -- the checks themselves, on a made-up package with the faults they are for ------------------------------------


def _write(root: Path, files: Mapping[str, str]) -> None:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def test_a_cycle_through_a_function_level_or_type_checking_import_is_found(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/web/__init__.py": "from pkg.web.app import build\n",
            "pkg/web/app.py": "from pkg.web import gallery\n\ndef build() -> None: ...\n",
            "pkg/web/gallery.py": "def run() -> None:\n    from .serve import start\n",
            "pkg/web/serve.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..web.app import build\n",
            "pkg/tasks/__init__.py": "",
            "pkg/tasks/records.py": "import pkg.tasks.store\n",
            "pkg/tasks/store.py": "from pkg.tasks import records\n",
            "pkg/lone.py": "import pkg\nimport pkg.tasks\nfrom pkg.tasks import records\n",
        },
    )
    graph = import_graph(tmp_path, "pkg")
    assert graph["pkg.web.gallery"] == {"pkg.web.serve": 2}, "a relative import inside a function"
    assert graph["pkg.web.serve"] == {"pkg.web.app": 3}, "two levels up, under TYPE_CHECKING"
    assert graph["pkg.lone"] == {"pkg": 1, "pkg.tasks": 2, "pkg.tasks.records": 3}
    assert graph["pkg.web"] == {"pkg.web.app": 1}
    cycles = describe_cycles(tmp_path, "pkg")
    assert cycles == [
        "pkg.tasks.records (pkg/tasks/records.py:1) -> pkg.tasks.store (pkg/tasks/store.py:1) -> pkg.tasks.records"
        "  [component: pkg.tasks.records, pkg.tasks.store]",
        "pkg.web.app (pkg/web/app.py:1) -> pkg.web.gallery (pkg/web/gallery.py:2) -> pkg.web.serve "
        "(pkg/web/serve.py:3) -> pkg.web.app  [component: pkg.web.app, pkg.web.gallery, pkg.web.serve]",
    ]


def test_an_import_of_a_higher_layer_is_named() -> None:
    graph = {
        "runapi_mcp.tasks.store": {"runapi_mcp.server.tools": 7, "runapi_mcp.client": 3},
        "runapi_mcp.server.tools": {},
        "runapi_mcp.client": {},
        "runapi_mcp.simulator._app": {"runapi_mcp.client": 9, "runapi_mcp.catalog": 4},
        "runapi_mcp.catalog": {},
        "runapi_mcp.http.app": {"runapi_mcp.simulator": 2},
        "runapi_mcp.simulator": {},
    }
    known = {name: (SRC / (name.replace(".", "/") + ".py"), False) for name in graph}
    assert layering_violations(graph, known) == [
        "runapi_mcp.http.app (runapi_mcp/http/app.py:2) imports runapi_mcp.simulator: only commands may import "
        "the simulator",
        "runapi_mcp.simulator._app (runapi_mcp/simulator/_app.py:9) imports runapi_mcp.client: the simulator may "
        "import only base, catalog",
        "runapi_mcp.tasks.store (runapi_mcp/tasks/store.py:7) imports runapi_mcp.server.tools: tasks is below server",
    ]
