"""Flags other than addresses: ``--data-path`` shows and names its values, every
``EXTPROC_*`` variable is parsed like its flag (a bad one is a usage error, not a
traceback), ``--strict`` / ``EXTPROC_STRICT``, and ``check``'s ``--config``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from extproc.cli import main
from extproc.cli.flags import build_parser
from extproc.wire import DataPath

COMMANDS = {
    "up": ["up", "--config", "x"],
    "serve": ["serve", "--config", "x"],
    "render": ["render", "--config", "x"],
    "check": ["check", "x"],
    "demo": ["demo"],
}


@pytest.fixture(autouse=True)
def _no_extproc_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("EXTPROC_")]:
        monkeypatch.delenv(name)


@pytest.mark.parametrize("command", ["up", "serve", "render", "demo"])
def test_data_path_help_lists_every_data_path(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args([command, "--help"])
    out = capsys.readouterr().out
    assert "--data-path {lua,ext_proc,module}" in out
    assert "DataPath." not in out


@pytest.mark.parametrize("value", ["DataPath.LUA", "LUA", "envoy"])
def test_a_bad_data_path_lists_the_values(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main([*COMMANDS["up"], "--data-path", value])
    assert exited.value.code == 2
    assert (
        f"invalid choice: {value!r} (choose from lua, ext_proc, module)" in capsys.readouterr().err
    )


@pytest.mark.parametrize("value", [p.value for p in DataPath])
def test_data_path_values_parse(value: str) -> None:
    assert build_parser().parse_args([*COMMANDS["up"], "--data-path", value]).data_path is (
        DataPath(value)
    )


@pytest.mark.parametrize(
    ("command", "env", "value", "says"),
    [
        pytest.param(
            "up", "DATA_PATH", "DataPath.LUA", "choose from lua, ext_proc, module", id="data"
        ),
        pytest.param("up", "CONCURRENCY", "two", "'two' is not a whole number", id="int"),
        pytest.param("up", "WATCH_INTERVAL_S", "soon", "not a number of seconds", id="seconds"),
        pytest.param("serve", "WORKLOAD_LABELS", "=gold", "'=gold' is not KEY=VALUE", id="labels"),
        pytest.param("check", "STRICT", "maybe", "'maybe' is not a boolean", id="strict"),
        pytest.param("up", "LOG_LEVEL", "loud", "invalid choice: 'loud'", id="log-level"),
    ],
)
def test_a_bad_variable_is_a_usage_error_naming_it(
    command: str,
    env: str,
    value: str,
    says: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv(f"EXTPROC_{env}", value)

    with pytest.raises(SystemExit) as exited:
        main(COMMANDS[command])
    err = capsys.readouterr().err
    assert exited.value.code == 2
    assert err.startswith("usage: extproc")
    assert f"(from $EXTPROC_{env})" in err
    assert says in err


@pytest.mark.parametrize("command", ["up", "serve", "render", "check"])
@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        pytest.param([], None, False, id="off"),
        pytest.param(["--strict"], None, True, id="flag"),
        pytest.param([], "1", True, id="env-1"),
        pytest.param([], "true", True, id="env-true"),
        pytest.param([], "0", False, id="env-0"),
        pytest.param(["--strict"], "0", True, id="flag-wins"),
    ],
)
def test_strict_comes_from_the_flag_or_extproc_strict(
    command: str,
    argv: list[str],
    env: str | None,
    expected: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if env is not None:
        monkeypatch.setenv("EXTPROC_STRICT", env)
    args = build_parser().parse_args([*COMMANDS[command], *argv])
    assert args.strict is expected
    assert args.strict_max_ejection_percent is False


def test_strict_max_ejection_percent_stays_a_flag_of_check() -> None:
    args = build_parser().parse_args(["check", "x", "--strict-max-ejection-percent"])
    assert args.strict_max_ejection_percent is True
    assert args.strict is False


@pytest.mark.parametrize(
    ("argv", "env", "path", "config"),
    [
        pytest.param(["check", "a.yaml"], None, "a.yaml", None, id="positional"),
        pytest.param(["check", "--config", "b.yaml"], None, None, "b.yaml", id="flag"),
        pytest.param(["check"], "c.yaml", None, "c.yaml", id="env"),
        pytest.param(["check", "a.yaml"], "c.yaml", "a.yaml", "c.yaml", id="positional-wins"),
        pytest.param(["check", "-"], None, "-", None, id="stdin"),
    ],
)
def test_check_takes_the_config_like_the_other_commands(
    argv: list[str],
    env: str | None,
    path: str | None,
    config: str | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if env is not None:
        monkeypatch.setenv("EXTPROC_CONFIG", env)
    args = build_parser().parse_args(argv)
    assert args.path == (Path(path) if path else None)
    assert args.config == (Path(config) if config else None)


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        pytest.param(["check"], "one of the arguments PATH --config is required", id="none"),
        pytest.param(
            ["check", "a.yaml", "--config", "b.yaml"],
            "argument --config: not allowed with argument PATH",
            id="both",
        ),
    ],
)
def test_check_needs_exactly_one_config(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    err = capsys.readouterr().err
    assert exited.value.code == 2
    assert err.startswith("usage: extproc check")
    assert says in err
