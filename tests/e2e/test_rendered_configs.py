"""Every Envoy config we ship or render passes ``envoy --mode validate``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from extproc.errors import StartupError
from extproc.istio import load_policy, load_policy_text
from extproc.render.bootstrap import render_bootstrap
from extproc.render.shipped import render_shipped
from extproc.server.envoy_process import validate_config
from extproc.settings import HostPort, Settings
from extproc.wire import MODULE_NAME, MODULE_SEARCH_PATH_VAR, DataPath
from tests.module_build import require_module

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = sorted((ROOT / "tests" / "fixtures").glob("*/*.yaml"))


def test_shipped_envoy_config_is_the_rendered_seed() -> None:
    shipped = ROOT / "envoy" / "envoy.yaml"
    rendered = render_shipped(ROOT / "envoy" / "mydb.yaml")
    if os.environ.get("EXTPROC_UPDATE_GOLDEN") == "1":
        shipped.write_text(rendered)
    assert shipped.read_text() == rendered, (
        "envoy/envoy.yaml is stale: run with EXTPROC_UPDATE_GOLDEN=1 and review the diff"
    )


def test_shipped_envoy_config_passes_envoy_validate() -> None:
    assert "OK" in validate_config(ROOT / "envoy" / "envoy.yaml")


@pytest.mark.parametrize("fixture", FIXTURES, ids=[f.stem for f in FIXTURES])
def test_rendered_config_passes_envoy_validate(fixture: Path, tmp_path: Path) -> None:
    import yaml

    bootstrap = render_bootstrap(load_policy(fixture), Settings(grpc=HostPort("extproc", 9002)))
    path = tmp_path / "envoy.yaml"
    path.write_text(yaml.safe_dump(bootstrap))
    assert "OK" in validate_config(path)


#: The DestinationRule ``tls`` variants of the seed's HTTPS example (tests/e2e/test_tls.py):
#: (tls lines with {certs} for the test-made files, mode, the upstream-sni annotation).
TLS_VARIANTS = {
    "simple-authority": ("", "SIMPLE", False),
    "simple-endpoint": ("", "SIMPLE", True),
    "sni-and-sans": ("sni: a.example\nsubjectAltNames:\n- a.example", "SIMPLE", False),
    "insecure-authority": ("insecureSkipVerify: true", "SIMPLE", False),
    "insecure-endpoint": ("insecureSkipVerify: true", "SIMPLE", True),
    "ca-certificates-endpoint": ("caCertificates: {certs}/ca.pem", "SIMPLE", True),
    "mutual-authority": (
        "caCertificates: {certs}/ca.pem\nclientCertificate: {certs}/c.pem\n"
        "privateKey: {certs}/k.pem",
        "MUTUAL",
        False,
    ),
    "mutual-endpoint": (
        "clientCertificate: {certs}/c.pem\nprivateKey: {certs}/k.pem",
        "MUTUAL",
        True,
    ),
}


@pytest.mark.parametrize("data_path", list(DataPath), ids=[p.value for p in DataPath])
@pytest.mark.parametrize("variant", list(TLS_VARIANTS))
def test_rendered_tls_config_passes_envoy_validate(
    variant: str, data_path: DataPath, tmp_path: Path
) -> None:
    import trustme
    import yaml

    from .test_tls import https_seed

    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    client = ca.issue_cert("workload.example")
    client.cert_chain_pems[0].write_to_path(str(tmp_path / "c.pem"))
    client.private_key_pem.write_to_path(str(tmp_path / "k.pem"))
    tls, mode, annotation = TLS_VARIANTS[variant]
    policy = load_policy_text(
        https_seed(443, tls.format(certs=tmp_path), annotation=annotation, mode=mode)
    )
    # The module path needs the socket directory, and validation loads the module.
    module = data_path is DataPath.MODULE
    env = require_module() if module else None
    bootstrap = render_bootstrap(
        policy,
        Settings(
            data_path=data_path,
            system_ca_file=str(tmp_path / "ca.pem"),
            socket_dir=Path("/run/extproc") if module else None,
        ),
    )
    path = tmp_path / "envoy.yaml"
    path.write_text(yaml.safe_dump(bootstrap))
    assert "OK" in validate_config(path, env=env)


@pytest.mark.parametrize("fixture", FIXTURES, ids=[f.stem for f in FIXTURES])
def test_rendered_module_config_passes_envoy_validate(fixture: Path, tmp_path: Path) -> None:
    import yaml

    env = require_module()
    settings = Settings(data_path=DataPath.MODULE, socket_dir=Path("/run/extproc"))
    path = tmp_path / "envoy.yaml"
    path.write_text(yaml.safe_dump(render_bootstrap(load_policy(fixture), settings)))
    assert "OK" in validate_config(path, env=env)


def test_validate_of_a_module_config_needs_the_module(tmp_path: Path) -> None:
    # Envoy loads every dynamic module the config names, also under --mode validate: the
    # stack and render --validate give it the module's directory.
    import yaml

    require_module()
    settings = Settings(data_path=DataPath.MODULE, socket_dir=Path("/run/extproc"))
    path = tmp_path / "envoy.yaml"
    path.write_text(yaml.safe_dump(render_bootstrap(load_policy(FIXTURES[0]), settings)))
    missing = {MODULE_SEARCH_PATH_VAR: str(tmp_path / "no-module-here")}
    with pytest.raises(StartupError, match=f"lib{MODULE_NAME}.so not found"):
        validate_config(path, env=missing)
