"""The layers of docs/architecture.md hold: no module imports a layer above its own, and no import
circle, counting the imports inside functions too (those are there for start-up time only)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("bench", "methods", "defenses")

# Top to bottom, as in docs/architecture.md; reports and bench.perf sit beside the executors.
LAYERS = {
    "commands": ["bench.cli", "bench.api"],
    "executors": ["bench.executors", "bench.rehearse", "bench.report", "bench.figures", "bench.citations", "bench.perf"],
    "grids and plans": ["bench.grid", "bench.plan"],
    "one cell": ["bench.runner", "bench.publish"],
    "plugins": ["methods", "defenses", "bench.archs", "bench.contrastive"],
    "foundations": ["bench"],  # every other module of the bench package
}
RANK = {prefix: rank for rank, prefixes in enumerate(LAYERS.values()) for prefix in prefixes}
# The package root (bench/__init__.py) is the public face: it exports bench.api's functions (`bench.evaluate`),
# so it ranks with the commands, and no module below them may import it (the version is bench.version).
PACKAGE_ROOT = "bench"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> int:
    if module == PACKAGE_ROOT:
        return RANK["bench.cli"]
    prefix = max((p for p in RANK if module == p or module.startswith(p + ".")), key=len)
    return RANK[prefix]


def project_imports() -> dict[str, set[str]]:
    """Module -> the project modules it imports (at any depth, type-checking-only imports left out)."""
    modules = {module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}
    graph = {}
    for module, path in modules.items():
        tree = ast.parse(path.read_text())
        type_checking = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                         and ast.unparse(node.test).endswith("TYPE_CHECKING") for n in ast.walk(node)}
        found = set()
        for node in ast.walk(tree):
            if id(node) in type_checking:
                continue
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            found |= {n for n in names if n in modules and n != module}
        graph[module] = found
    return graph


GRAPH = project_imports()


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_no_module_imports_a_layer_above_its_own(module):
    above = sorted(m for m in GRAPH[module] if layer_of(m) < layer_of(module))
    assert not above, f"{module} imports {above}, a layer above it"


def test_the_import_graph_has_no_circle():
    # A module may import its own package's __init__ (bench.report.write uses bench.report.render
    # through it); that edge is no circle of layers, so package -> own submodule edges are dropped.
    graph = {m: {d for d in deps if not m.startswith(d + ".")} for m, deps in GRAPH.items()}
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for dep in sorted(graph[module]):
            if state.get(dep) == "open":
                raise AssertionError("import circle: " + " -> ".join(path[path.index(dep):] + [dep]))
            if dep not in state:
                visit(dep, path + [dep])
        state[module] = "closed"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_the_layers_name_modules_that_exist():
    for prefix in RANK:
        assert any(m == prefix or m.startswith(prefix + ".") for m in GRAPH), prefix
