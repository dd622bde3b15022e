"""Each default is written once: the flags, the service, the renderer and the stack agree."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from extproc.cli.flags import build_parser, default_data_path, settings_from_args
from extproc.core.policy import Policy
from extproc.render.bootstrap import render_bootstrap
from extproc.settings import DEFAULTS, RENDER_ENVOY_ADMIN, RENDER_LISTEN, HostPort, Settings
from extproc.wire import SYNC_CLUSTER, DataPath

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _no_extproc_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("EXTPROC_")]:
        monkeypatch.delenv(name)


def _settings(*argv: str) -> Settings:
    return settings_from_args(build_parser().parse_args(list(argv)))


@pytest.mark.parametrize(
    "command",
    [
        pytest.param(["up"], id="up"),
        pytest.param(["serve", "--socket-dir", "/run/x"], id="serve"),
        pytest.param(["check"], id="check"),
    ],
)
def test_a_command_without_flags_runs_on_the_defaults(command: list[str]) -> None:
    settings = _settings(*command, "--config", "x.yaml")
    given: dict[str, Any] = {"config": Path("x.yaml"), "socket_dir": settings.socket_dir}
    if command[0] == "up":  # up picks the module where it builds
        given["data_path"] = default_data_path()
    assert settings == dataclasses.replace(DEFAULTS, **given)


def test_up_and_demo_default_to_the_module_only_where_a_c_compiler_is_found(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CC", "cc")
    assert _settings("up", "--config", "x.yaml").data_path is (
        DataPath.MODULE if shutil.which("cc") else DataPath.LUA
    )
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    assert _settings("up", "--config", "x.yaml").data_path is DataPath.LUA
    assert _settings("demo").data_path is DataPath.LUA
    # A flag or a variable always wins; serve and render never guess what their Envoy has.
    assert _settings("up", "--config", "x", "--data-path", "module").data_path is DataPath.MODULE
    monkeypatch.setenv("EXTPROC_DATA_PATH", "ext_proc")
    assert _settings("up", "--config", "x.yaml").data_path is DataPath.EXT_PROC
    monkeypatch.delenv("EXTPROC_DATA_PATH")
    monkeypatch.delenv("CC")
    assert _settings("serve", "--config", "x", "--socket-dir", "/s").data_path is DataPath.LUA


def test_render_differs_only_where_its_bootstrap_runs_elsewhere() -> None:
    settings = _settings("render", "--config", "x.yaml", "--socket-dir", "/run/x")
    expected = dataclasses.replace(
        DEFAULTS,
        config=Path("x.yaml"),
        socket_dir=Path("/run/x"),
        listen=RENDER_LISTEN,
        envoy_admin=RENDER_ENVOY_ADMIN,
    )
    assert settings == expected


def test_every_flag_sets_a_settings_field_of_its_name() -> None:
    """``settings_from_args`` is one loop over the fields: a flag whose dest is no field
    would be dropped without a word."""
    fields = {f.name for f in dataclasses.fields(Settings)}
    # What is read into a field by other means, or is not a setting.
    other = {"help", "version", "command", "log_level", "locality", "workload_labels"}
    other |= {"secret_file", "path", "output", "validate", "json", "pause"}
    other |= {"locality_from_node", "workload_labels_file"}  # read into workload
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command")
    assert subparsers.choices is not None
    for name, sub in subparsers.choices.items():
        for action in sub._actions:
            assert action.dest in fields | other, f"{name} {action.option_strings}"


def test_the_rendered_bootstrap_takes_the_service_addresses_from_the_settings() -> None:
    bootstrap = render_bootstrap(Policy(()), DEFAULTS)
    clusters = {c["name"]: c for c in bootstrap["static_resources"]["clusters"]}
    sync = _socket_addresses(clusters[SYNC_CLUSTER])
    assert sync == [HostPort(DEFAULTS.grpc.host, DEFAULTS.sync_port)]
    listener = bootstrap["static_resources"]["listeners"][0]["address"]["socket_address"]
    assert HostPort(listener["address"], listener["port_value"]) == DEFAULTS.listen


def _socket_addresses(node: Any) -> list[HostPort]:
    found: list[HostPort] = []
    if isinstance(node, dict):
        if "socket_address" in node:
            address = node["socket_address"]
            found.append(HostPort(address["address"], address["port_value"]))
        for value in node.values():
            found.extend(_socket_addresses(value))
    elif isinstance(node, list):
        for value in node:
            found.extend(_socket_addresses(value))
    return found


@pytest.mark.parametrize("path", ["docker-compose.yml", "Dockerfile"])
def test_the_shipped_files_use_the_status_view_default_port(path: str) -> None:
    text = (ROOT / path).read_text()
    ports = set(re.findall(r"127\.0\.0\.1:(\d+)/readyz|:(\d+)'\)\.rpartition", text))
    assert ports, "no status-view port found"
    assert {int(p) for pair in ports for p in pair if p} == {DEFAULTS.admin.port}


def test_no_module_but_settings_spells_a_default_port() -> None:
    defaults = {str(p) for p in (DEFAULTS.grpc.port, DEFAULTS.sync_port, DEFAULTS.admin.port)}
    defaults |= {str(RENDER_ENVOY_ADMIN.port)}
    for module in sorted((ROOT / "extproc").rglob("*.py")):
        if module.name == "settings.py":
            continue
        numbers = set(re.findall(r"(?<![\d.])(\d{4})(?![\d.])", module.read_text()))
        assert not numbers & defaults, f"{module.relative_to(ROOT)} spells {numbers & defaults}"


def test_the_settings_repr_leaves_the_shared_secret_out() -> None:
    # Settings are logged and shown in errors; the secret would let a process report outcomes.
    settings = dataclasses.replace(DEFAULTS, secret="s3cret-value-0123456789")
    assert "s3cret-value" not in repr(settings)
    assert settings.secret == "s3cret-value-0123456789"
