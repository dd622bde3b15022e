"""The core stays pure: no I/O, no clocks, no logging, no protocol libraries."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import extproc.core

CORE = Path(extproc.core.__file__).parent
FORBIDDEN = (
    "grpc",
    "google.protobuf",
    "envoy",
    "asyncio",
    "time",
    "logging",
    "yaml",
    "structlog",
    "socket",
)


def _imported_modules(path: Path) -> list[str]:
    """Every module a file imports, as dotted names (``from a import b`` yields a and a.b)."""
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
            names.extend(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _is_under(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


CORE_FILES = sorted(CORE.glob("*.py"))


@pytest.mark.parametrize("path", CORE_FILES, ids=[p.name for p in CORE_FILES])
def test_core_module_imports_nothing_impure(path: Path) -> None:
    bad = [m for m in _imported_modules(path) if any(_is_under(m, banned) for banned in FORBIDDEN)]
    assert bad == [], f"{path.name} imports {bad}"


@pytest.mark.parametrize("path", CORE_FILES, ids=[p.name for p in CORE_FILES])
def test_core_module_imports_only_core_from_this_project(path: Path) -> None:
    # The import direction is core <- istio <- render <- server <- cli.
    # extproc.errors is a leaf of value types (the exception tree, ``Problem``).
    outward = [
        m
        for m in _imported_modules(path)
        if _is_under(m, "extproc")
        and not _is_under(m, "extproc.core")
        and not _is_under(m, "extproc.errors")
    ]
    assert outward == [], f"{path.name} imports {outward}"


def test_core_has_the_expected_modules() -> None:
    names = {p.stem for p in CORE_FILES}
    assert {
        "policy",
        "locality",
        "priority",
        "outlier",
        "outlier_detector",
        "hostset",
        "balancer",
        "cluster",
        "table",
        "change",
    } <= names


@pytest.mark.parametrize(
    ("source", "banned"),
    [
        pytest.param("import time", "time", id="import"),
        pytest.param("from google.protobuf import json_format", "google.protobuf", id="from"),
        pytest.param("from google import protobuf", "google.protobuf", id="from-parent"),
        pytest.param("import grpc.aio as aio", "grpc", id="submodule"),
    ],
)
def test_the_import_walk_catches_each_import_form(tmp_path: Path, source: str, banned: str) -> None:
    module = tmp_path / "m.py"
    module.write_text(source + "\n", encoding="utf-8")
    assert any(_is_under(m, banned) for m in _imported_modules(module))
