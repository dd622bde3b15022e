"""Building the module: warnings are errors, a build is cached by source and compiler and never
rewritten, and a machine without a compiler, or not x86-64, hears so in one line."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from extproc.cli.flags import default_data_path
from extproc.module import build as build_module
from extproc.module.build import (
    LIBRARY_NAME,
    ModuleBuildError,
    build,
    cache_root,
    check_machine,
    compile_flags,
    find_compiler,
)
from extproc.settings import DEFAULTS
from extproc.wire import DataPath

pytestmark = pytest.mark.module


def test_the_module_builds_with_warnings_as_errors(tmp_path: Path) -> None:
    directory = build(cache_dir=tmp_path)

    assert {"-Wall", "-Wextra", "-Werror"} <= set(compile_flags())
    assert (directory / LIBRARY_NAME).is_file()
    assert directory.parent == tmp_path


def test_a_second_build_reuses_the_library_without_writing_it(tmp_path: Path) -> None:
    first = build(cache_dir=tmp_path)
    library = first / LIBRARY_NAME
    before = library.stat()

    second = build(cache_dir=tmp_path)

    assert second == first
    after = library.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no staging left behind


def test_another_compiler_builds_into_another_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = build(cache_dir=tmp_path)
    monkeypatch.setenv("CC", f"{find_compiler()[0]} -g")

    second = build(cache_dir=tmp_path)

    assert second != first
    assert (first / LIBRARY_NAME).is_file()
    assert (second / LIBRARY_NAME).is_file()


def test_another_source_builds_into_another_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = build(cache_dir=tmp_path)
    changed = tmp_path / "changed.c"
    changed.write_text(build_module.SOURCE.read_text() + "\n/* another version */\n")
    monkeypatch.setattr(build_module, "SOURCE", changed)

    assert build(cache_dir=tmp_path) != first


def test_no_compiler_is_one_line_that_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))

    with pytest.raises(ModuleBuildError) as caught:
        build(cache_dir=tmp_path)

    message = str(caught.value)
    assert "\n" not in message
    assert "C compiler" in message
    assert "apt-get install gcc" in message


def test_a_machine_that_may_reorder_stores_is_refused_in_one_line() -> None:
    with pytest.raises(ModuleBuildError) as caught:
        check_machine("aarch64")

    message = str(caught.value)
    assert "\n" not in message
    assert "x86-64" in message
    assert "aarch64" in message
    assert "--data-path lua" in message
    check_machine("x86_64")


def test_off_x86_64_nothing_is_compiled_and_the_default_path_is_not_the_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(build_module.platform, "machine", lambda: "aarch64")

    with pytest.raises(ModuleBuildError, match="needs an x86-64 machine"):
        build(cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []
    assert default_data_path() is DEFAULTS.data_path is not DataPath.MODULE


def test_a_cc_that_does_not_exist_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CC", "no-such-cc --flag")

    with pytest.raises(ModuleBuildError, match=r"\$CC \(no-such-cc --flag\) is not found"):
        find_compiler()


def test_a_source_the_compiler_rejects_is_an_error_with_its_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = tmp_path / "broken.c"
    broken.write_text("static int unused;\n")  # -Wall -Werror: an unused variable fails
    monkeypatch.setattr(build_module, "SOURCE", broken)

    with pytest.raises(ModuleBuildError, match="unused") as caught:
        build(cache_dir=tmp_path / "cache")

    assert str(caught.value).startswith("cannot build the module: ")
    assert list((tmp_path / "cache").iterdir()) == []


def test_the_cache_is_under_xdg_cache_home_or_home(tmp_path: Path) -> None:
    assert cache_root({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "extproc"
    assert cache_root({"HOME": str(tmp_path)}) == tmp_path / ".cache" / "extproc"


def test_the_cache_is_private_and_the_library_readable(tmp_path: Path) -> None:
    directory = build(cache_dir=tmp_path / "cache")

    assert stat.S_IMODE((tmp_path / "cache").stat().st_mode) == 0o700
    assert os.access(directory / LIBRARY_NAME, os.R_OK)


def test_the_asan_variant_is_linked_with_address_sanitizer(tmp_path: Path) -> None:
    directory = build(asan=True, cache_dir=tmp_path)

    needed = subprocess.run(
        ["readelf", "-d", str(directory / LIBRARY_NAME)], capture_output=True, text=True, check=True
    ).stdout
    assert directory.name.startswith("asan-")
    assert "libasan" in needed
    assert directory != build(cache_dir=tmp_path)
