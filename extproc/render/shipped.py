"""The Envoy config we ship in ``envoy/``: rendered from ``envoy/mydb.yaml`` (the seed)."""

from __future__ import annotations

from pathlib import Path

import yaml

from extproc.istio import load_policy
from extproc.render.bootstrap import RenderSettings, render_bootstrap

#: Where the shipped Envoy reaches the service and listens (compose and sidecar layouts).
SHIPPED_SETTINGS = RenderSettings(
    listen_host="0.0.0.0",
    listen_port=10000,
    ext_proc_host="127.0.0.1",
    ext_proc_port=9002,
    brain_port=9004,
    envoy_admin_host="127.0.0.1",
    envoy_admin_port=9901,
)

HEADER = (
    "# Rendered by `extproc render --config envoy/mydb.yaml` -- do not edit by hand.\n"
    "# tests/e2e/test_rendered_configs.py keeps it in sync and validates it with Envoy.\n"
)


def render_shipped(istio_config: Path) -> str:
    """The text of the shipped bootstrap for an Istio config file."""
    bootstrap = render_bootstrap(load_policy(istio_config), SHIPPED_SETTINGS)
    return HEADER + yaml.safe_dump(bootstrap, sort_keys=False)
