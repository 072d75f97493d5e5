"""
The package's layers: every module imports only from its own layer or the
ones below, no two modules import each other (directly or round a loop), and
no project import hides inside a function or under C{TYPE_CHECKING}.

From the bottom: the wire text, events and internals; settings; TLS; the data
path; backends; the session and operations (side by side, neither importing
the other); the application wiring; and on top the public testing module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "ftpproxy"

LAYERS: dict[str, int] = {
    "ftpproxy.wire": 0,
    "ftpproxy.events": 0,
    "ftpproxy.internals": 0,
    "ftpproxy.settings": 1,
    "ftpproxy.tls": 2,
    "ftpproxy.data": 3,
    "ftpproxy.backends": 4,
    "ftpproxy.session": 5,
    "ftpproxy.ops": 5,
    "ftpproxy.app": 6,
    "ftpproxy.report": 6,
    "ftpproxy.testing": 7,
    "ftpproxy": 7,
}


def moduleName(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def area(module: str) -> str:
    """
    The layer entry a module belongs to (its subpackage, or itself).
    """
    parts = module.split(".")
    for length in (2, 1):
        candidate = ".".join(parts[:length])
        if candidate in LAYERS:
            return candidate
    raise AssertionError(f"{module} is in no layer: add it to LAYERS")


def modules() -> dict[str, ast.Module]:
    return {
        moduleName(path): ast.parse(path.read_text(), str(path))
        for path in sorted(PACKAGE.rglob("*.py"))
    }


def projectImports(tree: ast.Module, module: str) -> list[tuple[str, ast.AST, bool]]:
    """
    (imported module, node, at module level) for every import of the
    project; C{from ftpproxy.x import y} counts as ftpproxy.x.y when that is
    a module.
    """
    found: list[tuple[str, ast.AST, bool]] = []
    topLevel = {id(node) for node in tree.body}

    def visit(node: ast.AST, atTop: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = atTop and id(child) in topLevel
            if isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name.split(".")[0] == "ftpproxy":
                        found.append((alias.name, child, nested))
            elif isinstance(child, ast.ImportFrom) and child.module:
                if child.module.split(".")[0] == "ftpproxy" and child.level == 0:
                    for alias in child.names:
                        candidate = f"{child.module}.{alias.name}"
                        found.append((candidate if candidate in ALL else child.module, child, nested))
            visit(child, atTop and isinstance(child, ast.Module))

    visit(tree, True)
    return found


ALL = modules()


@pytest.mark.parametrize("module", sorted(ALL))
def test_importsGoDown(module: str) -> None:
    mine = area(module)
    for imported, node, _ in projectImports(ALL[module], module):
        theirs = area(imported)
        assert LAYERS[theirs] <= LAYERS[mine], (
            f"{module} (layer {LAYERS[mine]}) imports {imported} (layer {LAYERS[theirs]}), "
            f"line {node.lineno}"
        )
        if LAYERS[theirs] == LAYERS[mine] and mine != theirs and LAYERS[mine] > 0:
            pytest.fail(f"{module} imports {imported}: side-by-side layers stay apart")


@pytest.mark.parametrize("module", sorted(ALL))
def test_noHiddenImports(module: str) -> None:
    """
    Project imports sit at the top of a module: none inside a function or
    under C{if TYPE_CHECKING:}, where a cycle would hide.
    """
    hidden = [
        f"{imported} (line {node.lineno})"
        for imported, node, atTop in projectImports(ALL[module], module)
        if not atTop
    ]
    assert hidden == [], f"{module} imports inside a block: {hidden}"


def test_noCycles() -> None:
    graph = {
        module: {imported for imported, _, _ in projectImports(tree, module) if imported in ALL}
        for module, tree in ALL.items()
    }
    # Packages' __init__ modules re-export; they are not part of a loop
    # unless a module imports them.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    onStack: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def connect(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        onStack.add(node)
        for other in graph[node]:
            if other not in index:
                connect(other)
                low[node] = min(low[node], low[other])
            elif other in onStack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                onStack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph[node]:
                cycles.append(sorted(component))

    for node in graph:
        if node not in index:
            connect(node)
    assert cycles == []


def test_layersKnowEveryModule() -> None:
    for module in ALL:
        area(module)
