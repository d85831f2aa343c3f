"""The code's layout as the README's "Layout" states it, read from the imports (ast):
the shared model imports nothing of the project, cloudinit/ only the model, the packages
depend on each other one way (no cycle between them, nor between modules: an import
inside a function counts, as it only hides a cycle until the call),
and no test module imports another (what tests share is a helper module or a fixture)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
PACKAGES = ("model", "components", "cloudinit", "deploy", "localcloud", "mockcloud")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}


def project_module(name: str) -> str | None:
    """The project's module that `import name` loads (a package for its attribute), or None."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imported(path: Path) -> set[str]:
    """The project's modules that `path` imports, anywhere in it."""
    tree = ast.parse(path.read_text())
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {project_module(alias.name) for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[:len(package.split(".")) - node.level + 1] if node.level else []
            source = ".".join([*base, *([node.module] if node.module else [])])
            found |= {project_module(f"{source}.{alias.name}") for alias in node.names}
    return found - {None, me}


def cycle_in(graph: dict[str, set[str]]) -> list[str]:
    """One cycle of the graph (its nodes in order, the first again at the end), or []."""
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = "open"
        path.append(node)
        for after in sorted(graph.get(node, ())):
            if state.get(after) == "open":
                return path[path.index(after):] + [after]
            if after not in state and (found := visit(after)):
                return found
        state[node] = "done"
        path.pop()
        return []

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return []


def package_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {package: set() for package in PACKAGES}
    for name, path in MODULES.items():
        graph[name.split(".")[0]] |= {other.split(".")[0] for other in imported(path)}
    return {package: needs - {package} for package, needs in graph.items()}


def test_the_packages_depend_on_each_other_one_way_and_the_model_on_none():
    graph = package_graph()
    assert graph["model"] == set(), "the shared model imports none of the project's packages"
    assert graph["cloudinit"] == {"model"}, "cloudinit/ reads the shared model only (components/ reads it too)"
    assert cycle_in(graph) == []


def test_no_module_imports_itself_back():
    graph = {name: imported(path) for name, path in MODULES.items()}
    assert cycle_in(graph) == []


def test_no_test_module_imports_another():
    importing = {}
    for path in sorted(TESTS.rglob("test_*.py")):
        tree = ast.parse(path.read_text())
        names = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
        names += [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module]
        if tests := [n for n in names if n.split(".")[-1].startswith("test_")]:
            importing[str(path.relative_to(TESTS))] = tests
    assert importing == {}


def test_a_cycle_is_found():
    """The check above can fail: a graph with a cycle is told apart from one without."""
    assert cycle_in({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle_in({"a": {"b"}, "b": {"c"}, "c": set()}) == []
