"""Every Envoy config we ship or render passes ``envoy --mode validate``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from extproc.istio import load_policy
from extproc.render.bootstrap import RenderSettings, render_bootstrap
from extproc.render.shipped import render_shipped
from extproc.server.envoy_process import validate_config

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = sorted((ROOT / "tests" / "fixtures" / "seed").glob("*.yaml"))


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

    bootstrap = render_bootstrap(load_policy(fixture), RenderSettings(ext_proc_host="extproc"))
    path = tmp_path / "envoy.yaml"
    path.write_text(yaml.safe_dump(bootstrap))
    assert "OK" in validate_config(path)
