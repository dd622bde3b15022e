"""The seed's YAML for the e2e tests: the demo's, with test-sized outlier times."""

from __future__ import annotations

from extproc.demo import seed_yaml


def seed(
    east_port: int,
    west_port: int,
    *,
    outlier: bool = True,
    interval: str = "1s",
    base: str = "2s",
) -> str:
    return seed_yaml(east_port, west_port, outlier=outlier, interval=interval, base=base)
