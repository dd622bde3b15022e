"""Imports go one way: core <- istio <- render <- server <- cli, and sandbox imports none."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import extproc

ROOT = Path(extproc.__file__).parent

# What each layer may import from the project (besides itself).
ALLOWED = {
    "core": {"errors"},  # Problem: a policy's warnings keep where they were found
    "istio": {"core", "errors"},
    "render": {"core", "istio", "errors", "settings", "wire"},
    "sandbox": set(),
    # module: the stack builds the C shim for the module path (extproc.module.build).
    "server": {"core", "istio", "render", "errors", "clock", "settings", "wire", "module"},
}


def _project_imports(path: Path) -> set[str]:
    layers = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        for name in names:
            parts = name.split(".")
            if parts[0] == "extproc" and len(parts) > 1:
                layers.add(parts[1])
    return layers


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_layer_imports_only_the_layers_below_it(layer: str) -> None:
    for path in sorted((ROOT / layer).glob("*.py")):
        outside = _project_imports(path) - ALLOWED[layer] - {layer}
        assert not outside, f"{path.relative_to(ROOT)} imports extproc.{sorted(outside)}"
