"""The package rules of ../shared/DESIGN.md, read from the source: who may import whom, and no cycles.

Every ``import`` statement is read with ``ast``, lazy imports inside functions included, so a rule
holds for code paths a test run may never take, and a cycle hidden behind a lazy import still counts
(it still ties two modules together). Imports under ``if TYPE_CHECKING:`` never run and are skipped.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("device_agent", "toolchain", "fleet")

# (importer prefix, forbidden import prefixes): ../shared/DESIGN.md, "Packages and their rooms".
RULES = {
    "device_agent": ("toolchain", "fleet", "tensorflow", "keras", "onnx", "tf2onnx"),
    "toolchain": ("fleet",),
    "fleet": ("toolchain", "tensorflow", "keras"),
}


@dataclass(frozen=True)
class Import:
    importer: str
    target: str
    line: int


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    modules: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "migrations" not in path.parts:
                modules[module_name(path)] = path
    return modules


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _absolute(name: str, node: ast.ImportFrom, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = name.split(".") if is_package else name.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def imports_of(name: str, path: Path, known: dict[str, Path]) -> Iterator[Import]:
    """Each import in ``path``: ``from a import b`` names ``a.b`` when that is a module, else ``a``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_package = path.name == "__init__.py"

    def walk(node: ast.AST) -> Iterator[Import]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                for alias in child.names:
                    yield Import(name, alias.name, child.lineno)
            elif isinstance(child, ast.ImportFrom):
                base = _absolute(name, child, is_package)
                for alias in child.names:
                    sub = f"{base}.{alias.name}"
                    yield Import(name, sub if sub in known else base, child.lineno)
            elif isinstance(child, ast.If) and _is_type_checking(child):
                continue
            else:
                yield from walk(child)

    yield from walk(tree)


def all_imports() -> list[Import]:
    known = project_modules()
    return [imp for name, path in known.items() for imp in imports_of(name, path, known)]


def _under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def test_the_graph_is_read() -> None:
    imports = all_imports()
    targets = {(i.importer, i.target) for i in imports}
    # A rule checker that reads nothing passes everything: prove it sees known edges.
    assert ("fleet.service", "device_agent.protocol") in targets or any(
        _under(i.importer, "fleet") and _under(i.target, "device_agent") for i in imports
    )
    assert any(_under(i.importer, "toolchain") and _under(i.target, "tensorflow") for i in imports)
    assert len(imports) > 300


@pytest.mark.parametrize("package", sorted(RULES))
def test_package_imports_follow_the_design(package: str) -> None:
    broken = [
        f"{i.importer}:{i.line} imports {i.target}"
        for i in all_imports()
        if _under(i.importer, package) and any(_under(i.target, f) for f in RULES[package])
    ]
    assert broken == []


def test_the_device_never_imports_the_simulator() -> None:
    broken = [
        f"{i.importer}:{i.line} imports {i.target}"
        for i in all_imports()
        if _under(i.importer, "device_agent") and _under(i.target, "fleet.sim")
    ]
    assert broken == []


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative; returns the components with more than one module (cycles)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_strongly_connected_finds_a_cycle() -> None:
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert strongly_connected({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_between_modules() -> None:
    known = project_modules()
    graph: dict[str, set[str]] = {name: set() for name in known}
    for i in all_imports():
        if i.target in known and i.target != i.importer:
            graph[i.importer].add(i.target)
    assert strongly_connected(graph) == []
