"""The Envoy config we ship in ``envoy/``: rendered from ``envoy/mydb.yaml`` (the seed)."""

from __future__ import annotations

from pathlib import Path

import yaml

from extproc.istio import load_policy
from extproc.render.bootstrap import render_bootstrap
from extproc.settings import RENDER_ENVOY_ADMIN, RENDER_LISTEN, Settings

#: Where the shipped Envoy listens and reaches the service: the sidecar layout, over the
#: service's sockets in /run/extproc (``extproc serve --socket-dir /run/extproc``).
SHIPPED_SETTINGS = Settings(
    listen=RENDER_LISTEN,
    envoy_admin=RENDER_ENVOY_ADMIN,
    socket_dir=Path("/run/extproc"),
)

HEADER = (
    "# Rendered by `extproc render --config envoy/mydb.yaml --socket-dir /run/extproc`\n"
    "# -- do not edit by hand.\n"
    "# tests/e2e/test_rendered_configs.py keeps it in sync and validates it with Envoy.\n"
)


def render_shipped(istio_config: Path) -> str:
    """The text of the shipped bootstrap for an Istio config file."""
    bootstrap = render_bootstrap(load_policy(istio_config), SHIPPED_SETTINGS)
    return HEADER + yaml.safe_dump(bootstrap, sort_keys=False)
