"""The package's layers, as the README's "How it is built" lists them: imports point down only,
no two modules import each other, no module grows past 400 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import sweeper

PACKAGE = Path(sweeper.__file__).parent
# bottom to top; a module may import from its own layer's package or any layer below
LAYERS = [{"errors", "redaction"}, {"store", "atomic_files", "artifacts", "search", "cpu_share", "gpus", "testing"}, {"spec"}, {"data"}, {"train"},
          {"sweep"}, {"analyze"}, {"cli", "__main__"}]


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sweeper"):
            named = [f"{node.module}.{a.name}" for a in node.names]
            out.update(n for n in named if n in modules)
            if not any(n in modules for n in named) and node.module in modules:
                out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name in modules)
    return out - {"sweeper"}


def _layer(module: str) -> int:
    top = module.split(".")[1] if "." in module else "__init__"
    return next(i for i, names in enumerate(LAYERS) if top in names) if top != "__init__" else 0


def test_imports_point_down_and_never_both_ways():
    modules = _modules()
    graph = {name: _imports(path, modules) - {name} for name, path in modules.items()}
    upward = [f"{a} -> {b}" for a, bs in graph.items() for b in bs if _layer(b) > _layer(a)]
    mutual = sorted({" <-> ".join(sorted((a, b))) for a, bs in graph.items() for b in bs if a in graph[b]})
    assert not upward, f"imports from a layer above: {upward}"
    assert not mutual, f"modules importing each other: {mutual}"


def test_every_package_is_a_known_layer_and_no_module_is_long():
    tops = {name.split(".")[1] for name in _modules() if "." in name}
    assert tops <= set().union(*LAYERS), f"not in a layer: {tops - set().union(*LAYERS)}"
    long = {name: n for name, path in _modules().items() if (n := len(path.read_text().splitlines())) > 400}
    assert not long, f"modules over 400 lines: {long}"
