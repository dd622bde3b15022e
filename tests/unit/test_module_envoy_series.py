"""The module path starts only with the Envoy series whose dynamic-module ABI it speaks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from extproc.errors import StartupError
from extproc.server.envoy_process import envoy_version
from extproc.server.stack import envoy_environment
from extproc.settings import Settings
from extproc.wire import MODULE_ENVOY_SERIES, DataPath


def _fake_envoy(tmp_path: Path, version_line: str) -> Path:
    script = tmp_path / "envoy"
    script.write_text(f"#!/bin/sh\necho '{version_line}'\n")
    script.chmod(0o755)
    return script


def test_the_version_is_read_from_envoys_version_line(tmp_path: Path) -> None:
    envoy = _fake_envoy(tmp_path, "envoy  version: 9e55/1.40.0/Clean/RELEASE/BoringSSL")
    assert envoy_version(envoy) == "1.40.0"
    assert envoy_version(_fake_envoy(tmp_path, "something else")) == ""


def test_another_envoy_series_is_a_clear_error_before_anything_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    envoy = _fake_envoy(tmp_path, "envoy  version: abcd/1.41.2/Clean/RELEASE/BoringSSL")
    monkeypatch.setenv("EXTPROC_ENVOY_BIN", str(envoy))
    with pytest.raises(StartupError, match=r"ABI v0\.2\.0, and this Envoy is 1\.41\.2"):
        envoy_environment(Settings(data_path=DataPath.MODULE))
    # The other data paths do not care which Envoy it is.
    assert envoy_environment(Settings(data_path=DataPath.LUA)) == {}


def test_the_wheels_envoy_is_the_series_the_module_was_built_for() -> None:
    if os.environ.get("EXTPROC_ENVOY_BIN"):
        pytest.skip("EXTPROC_ENVOY_BIN names another Envoy than the wheel's")
    assert envoy_version().rpartition(".")[0] == MODULE_ENVOY_SERIES
