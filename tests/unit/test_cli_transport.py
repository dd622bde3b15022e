"""serve and render never open a transport any local process could report outcomes on."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest
import yaml

from extproc.cli import main
from extproc.wire import SECRET_HEADER

SECRET = "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0"


def _lua(bootstrap: dict[str, Any]) -> str:
    """The Lua filter's source in a rendered bootstrap."""
    hcm = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    [lua] = [f for f in hcm["typed_config"]["http_filters"] if f["name"].endswith(".lua")]
    return str(lua["typed_config"]["default_source_code"]["inline_string"])


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "mydb.yaml"
    path.write_text((Path(__file__).parents[2] / "envoy" / "mydb.yaml").read_text())
    return path


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "secret"
    path.write_text(SECRET + "\n")
    path.chmod(0o600)
    return path


@pytest.mark.parametrize("command", ["serve", "render"])
def test_serve_and_render_over_tcp_without_a_secret_are_usage_errors(
    command: str, config: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("EXTPROC_SOCKET_DIR", raising=False)
    monkeypatch.delenv("EXTPROC_SECRET_FILE", raising=False)
    with pytest.raises(SystemExit) as exited:
        main([command, "--config", str(config)])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: extproc {command}")
    assert "needs --secret-file" in err
    assert "--socket-dir" in err


def test_render_with_a_secret_puts_it_on_every_stream_and_writes_a_private_file(
    config: Path, secret_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "envoy.yaml"
    assert (
        main(["render", "--config", str(config), "--secret-file", str(secret_file), "-o", str(out)])
        == 0
    )
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    text = out.read_text()
    bootstrap = yaml.safe_load(text)
    metadata = [{"key": SECRET_HEADER, "value": SECRET}]
    [ext_proc] = [c for c in bootstrap["static_resources"]["clusters"] if c["name"] == "extproc"]
    assert ext_proc["type"] == "STATIC"
    services = [
        c["eds_cluster_config"]["eds_config"]["api_config_source"]["grpc_services"]
        for c in bootstrap["static_resources"]["clusters"]
        if c["type"] == "EDS"
    ]
    assert services
    assert all(s[0]["initial_metadata"] == metadata for s in services)
    assert f'local SECRET = "{SECRET}"' in _lua(bootstrap)  # the Lua filter's sync requests


def test_render_over_sockets_names_the_directory_and_needs_no_secret(
    config: Path, tmp_path: Path
) -> None:
    out = tmp_path / "envoy.yaml"
    assert (
        main(["render", "--config", str(config), "--socket-dir", "/run/extproc", "-o", str(out)])
        == 0
    )
    clusters = {
        c["name"]: c for c in yaml.safe_load(out.read_text())["static_resources"]["clusters"]
    }
    for name, socket in (("extproc", "grpc.sock"), ("extproc_brain", "sync.sock")):
        [lb] = clusters[name]["load_assignment"]["endpoints"][0]["lb_endpoints"]
        assert lb["endpoint"]["address"] == {"pipe": {"path": f"/run/extproc/{socket}"}}
    bootstrap = yaml.safe_load(out.read_text())
    assert "initial_metadata" not in out.read_text()
    assert 'local SECRET = ""' in _lua(bootstrap)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        pytest.param("short", "must be 16-512 characters", id="too-short"),
        pytest.param("has spaces in the middle of it", "must be 16-512 characters", id="spaces"),
        pytest.param('quote"in-the-secret-here', "must be 16-512 characters", id="quote"),
    ],
)
def test_a_secret_that_cannot_travel_as_it_is_is_an_error_naming_the_file(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, message: str
) -> None:
    path = tmp_path / "secret"
    path.write_text(content)
    path.chmod(0o600)
    assert main(["render", "--config", str(config), "--secret-file", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"--secret-file {path}: the secret {message}" in err


def test_a_missing_secret_file_is_an_error_naming_it(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope"
    assert main(["render", "--config", str(config), "--secret-file", str(missing)]) == 1
    assert f"--secret-file {missing}: cannot read" in capsys.readouterr().err


def test_a_secret_file_others_can_read_gives_a_warning(
    config: Path, secret_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret_file.chmod(0o644)
    assert main(["render", "--config", str(config), "--secret-file", str(secret_file)]) == 0
    assert "readable by other users (mode 644); chmod 600 it" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["serve", "render"])
@pytest.mark.parametrize("with_secret", [False, True], ids=["tcp", "tcp-with-secret"])
def test_the_module_path_without_a_socket_directory_is_a_usage_error(
    command: str,
    with_secret: bool,
    config: Path,
    secret_file: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("EXTPROC_SOCKET_DIR", raising=False)
    monkeypatch.delenv("EXTPROC_SECRET_FILE", raising=False)
    secret = ["--secret-file", str(secret_file)] if with_secret else []
    with pytest.raises(SystemExit) as exited:
        main([command, "--config", str(config), "--data-path", "module", *secret])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: extproc {command}")
    assert f"{command} --data-path module needs --socket-dir" in err


def test_render_on_the_module_path_points_the_module_at_the_socket_directory(
    config: Path, tmp_path: Path
) -> None:
    out = tmp_path / "envoy.yaml"
    argv = ["render", "--config", str(config), "--data-path", "module"]
    assert main([*argv, "--socket-dir", "/run/extproc", "-o", str(out)]) == 0
    bootstrap = yaml.safe_load(out.read_text())
    hcm = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    [module] = hcm["typed_config"]["http_filters"][:1]
    assert module["typed_config"]["filter_config"]["value"] == "/run/extproc/module.sock"
    names = {c["name"] for c in bootstrap["static_resources"]["clusters"]}
    assert "extproc_brain" not in names  # no sync cluster: no Lua
