"""The layering holds: the library never imports the flows, and no module imports itself back through others.

Read from the source with `ast` (every import statement, also those inside functions), so a lazy import that
would close a cycle is caught as well.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"retrainer": ROOT / "src" / "retrainer", "flows": ROOT / "flows"}


def _modules() -> dict[str, Path]:
    modules = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = [package, *path.relative_to(folder).with_suffix("").parts]
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _imported(node: ast.AST, modules: dict[str, Path]) -> set[str]:
    """The project modules an import statement names (`from a import b` is a.b when that is a module, else a)."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names if alias.name in modules}
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        names = {f"{node.module}.{alias.name}" for alias in node.names}
        found = {name for name in names if name in modules}
        return found | ({node.module} if node.module in modules and found != names else set())
    return set()


def import_graph() -> dict[str, set[str]]:
    """Each project module and the project modules it imports anywhere in its source."""
    modules = _modules()
    return {
        name: {target for node in ast.walk(ast.parse(path.read_text())) for target in _imported(node, modules)}
        for name, path in modules.items()
    }


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle as the list of modules around it, or [] when there is none (depth-first search)."""
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(module: str) -> list[str]:
        state[module], cycle = "open", []
        path.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[module] = "done"
        path.pop()
        return cycle

    for module in sorted(graph):
        if module not in state and (cycle := visit(module)):
            return cycle
    return []


def test_the_library_never_imports_the_flows():
    graph = import_graph()
    offenders = {
        m: sorted(t for t in ts if t.split(".")[0] == "flows") for m, ts in graph.items() if m[:9] == "retrainer"
    }
    assert {m: ts for m, ts in offenders.items() if ts} == {}


def test_there_is_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 50 and graph["flows.retrain"] >= {"retrainer.app.retrain", "flows.canary"}
    assert find_cycle(graph) == []


def test_a_cycle_is_found_when_there_is_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) == []
