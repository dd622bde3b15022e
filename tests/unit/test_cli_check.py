"""``extproc check`` as CI runs it: the config from PATH, ``--config``, ``EXTPROC_CONFIG``
or standard input; a summary on success; the workload's locality warnings; ``--strict``."""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from extproc.cli import main
from extproc.cli.flags import build_parser, settings_from_args
from extproc.errors import ConfigError
from extproc.server.lifecycle import read_config

SEED = """\
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {name: mydb}
spec:
  hosts: [mydb.com]
  location: MESH_EXTERNAL
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints:
  - {address: 10.0.0.1, locality: us-east1}
  - {address: 10.0.0.2, locality: us-west}
---
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {name: mydb}
spec:
  host: mydb.com
  trafficPolicy:
    outlierDetection:
      consecutive5xxErrors: 1
      interval: 1s
      baseEjectionTime: 30s
      maxEjectionPercent: 100
"""

# The same with a field Istio has and extproc ignores: a warning, an error with --strict.
WITH_WARNING = SEED.replace(
    "consecutive5xxErrors: 1", "consecutive5xxErrors: 1\n      consecutiveErrors: 1"
)

MISMATCH = 'warning: --locality "US-EAST1" matches no endpoint\'s region'


@pytest.fixture(autouse=True)
def _no_extproc_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("EXTPROC_")]:
        monkeypatch.delenv(name)


@pytest.fixture(autouse=True)
def _unconfigure_logging() -> Iterator[None]:
    """``main`` points structlog at this test's captured stderr, closed after it."""
    yield
    structlog.reset_defaults()


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "mydb.yaml"
    path.write_text(SEED)
    return path


def stdin(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(text.encode())))


@pytest.mark.parametrize("how", ["positional", "flag", "env"])
def test_check_reads_the_config_from_path_flag_or_variable_and_prints_a_summary(
    config: Path, how: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = {"positional": [str(config)], "flag": ["--config", str(config)], "env": []}[how]
    if how == "env":
        monkeypatch.setenv("EXTPROC_CONFIG", str(config))

    assert main(["check", *argv]) == 0
    out, err = capsys.readouterr()
    assert f"{config}: OK" in err
    assert "services: 1" in out
    assert "outbound|80||mydb.com" in out
    assert "10.0.0.1:80" in out


def test_check_dash_reads_standard_input(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    stdin(monkeypatch, SEED)
    assert main(["check", "-"]) == 0
    out, err = capsys.readouterr()
    assert "<stdin>: OK" in err
    assert "services: 1" in out


def test_check_with_a_locality_shows_each_endpoints_priority(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", str(config), "--locality", "us-east1"]) == 0
    out, err = capsys.readouterr()
    assert "warning" not in err
    rows = [line.split() for line in out.splitlines() if line.startswith("10.0.0.")]
    assert [(row[0], row[-1]) for row in rows] == [("10.0.0.1:80", "0"), ("10.0.0.2:80", "1")]


def test_check_without_a_locality_says_nothing_of_localities(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", str(config)]) == 0
    assert "warning" not in capsys.readouterr().err


@pytest.mark.parametrize("via", ["flag", "env"])
def test_check_warns_when_the_locality_matches_no_endpoint(
    config: Path, via: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [str(config)]
    if via == "flag":
        argv += ["--locality", "US-EAST1"]
    else:
        monkeypatch.setenv("EXTPROC_LOCALITY", "US-EAST1")

    assert main(["check", *argv]) == 0
    err = capsys.readouterr().err
    assert MISMATCH in err
    assert 'did you mean "us-east1"' in err


@pytest.mark.parametrize("via", ["flag", "env"])
def test_strict_check_fails_on_a_locality_that_matches_no_endpoint(
    config: Path, via: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [str(config), "--locality", "US-EAST1"]
    if via == "flag":
        argv.append("--strict")
    else:
        monkeypatch.setenv("EXTPROC_STRICT", "1")

    assert main(["check", *argv]) == 1
    out, err = capsys.readouterr()
    assert f'error: {config}: --locality "US-EAST1" matches no endpoint\'s region' in err
    assert "OK" not in err
    assert out == ""


def test_strict_check_fails_on_a_config_warning(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config.write_text(WITH_WARNING)
    assert main(["check", str(config)]) == 0
    warned = capsys.readouterr().err
    assert "warning: " in warned

    assert main(["check", str(config), "--strict"]) == 1
    err = capsys.readouterr().err
    assert "error: " in err
    assert warned.splitlines()[0].removeprefix("warning: ") in err


@pytest.mark.parametrize("command", ["up", "serve"])
def test_up_and_serve_read_the_locality_warning_with_the_config(config: Path, command: str) -> None:
    args = build_parser().parse_args([command, "--config", str(config), "--locality", "US-EAST1"])
    policy = read_config(config, settings_from_args(args))
    assert any('--locality "US-EAST1" matches no' in str(w) for w in policy.warnings)

    strict = build_parser().parse_args([*[command, "--config", str(config)], "--strict"])
    with pytest.raises(ConfigError, match="matches no endpoint's region"):
        read_config(config, settings_from_args(strict))
