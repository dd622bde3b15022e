"""A client never picks the upstream: not by a header, not when the service is down."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from extproc.istio import load_policy_text
from extproc.render.bootstrap import render_bootstrap
from extproc.sandbox.client import get
from extproc.settings import Settings
from extproc.wire import METADATA_HOST_KEY, METADATA_NAMESPACE, DataPath

from .conftest import EAST, Region, StackFactory
from .seed_yaml import seed

pytestmark = pytest.mark.e2e

FORGED_HEADERS = [
    # ORIGINAL_DST's own header, the header the Override Host policy's docs configure (the
    # Gateway API inference extension's), our metadata key as a header, and a cluster-header
    # guess.
    "x-envoy-original-dst-host",
    "x-gateway-destination-endpoint",
    "x-extproc-host",
    "x-route-cluster",
]


def _nodes(value: Any) -> Iterator[dict[str, Any]]:
    """Every mapping in a rendered config, depth first."""
    if isinstance(value, dict):
        yield value
        for child in value.values():
            yield from _nodes(child)
    elif isinstance(value, list):
        for child in value:
            yield from _nodes(child)


def test_the_rendered_config_reads_no_header_for_routing(data_path: DataPath) -> None:
    # Everything in Envoy that can take the upstream from a request header: cluster_header
    # routes, ORIGINAL_DST's use_http_header, an Override Host header source.
    policy = load_policy_text(seed(8080, 8081), "seed.yaml")
    sockets = Path("/run/extproc") if data_path is DataPath.MODULE else None
    bootstrap = render_bootstrap(policy, Settings(data_path=data_path, socket_dir=sockets))
    sources = []
    for node in _nodes(bootstrap):
        assert "cluster_header" not in node
        assert "use_http_header" not in node
        assert "original_dst_lb_config" not in node
        sources += node.get("override_host_sources", [])
    metadata_only = [
        {"metadata": {"key": METADATA_NAMESPACE, "path": [{"key": METADATA_HOST_KEY}]}}
    ]
    # lua and the module select with the override host; ext_proc with the service's dynamic
    # metadata.
    assert sources == (metadata_only if data_path is DataPath.EXT_PROC else [])


@pytest.mark.parametrize("header", FORGED_HEADERS)
async def test_forged_routing_header_is_ignored(
    regions: dict[str, Region], start_stack: StackFactory, header: str
) -> None:
    stack = await start_stack(seed(regions["east"].port, regions["west"].port))
    west = f"127.0.0.12:{regions['west'].port}"

    replies = [
        await get(stack.settings.listen, "mydb.com", headers={header: west}) for _ in range(5)
    ]

    assert [r.served_by for r in replies] == [EAST] * 5


@pytest.mark.parametrize("header", FORGED_HEADERS)
async def test_with_the_service_down_a_forged_header_reaches_nothing(
    regions: dict[str, Region], start_stack: StackFactory, header: str, data_path: DataPath
) -> None:
    stack = await start_stack(seed(regions["east"].port, regions["west"].port))
    assert stack.envoy is not None
    assert stack.envoy.admin_address is not None
    assert (await get(stack.settings.listen, "mydb.com")).served_by == EAST
    await stack.app.stop()
    west = regions["west"].servers[0]
    west_before = sum(west.requests_served.values())
    envoy_admin = "{}:{}".format(*stack.envoy.admin_address)

    for target in (f"127.0.0.12:{regions['west'].port}", envoy_admin):
        reply = await get(stack.settings.listen, "mydb.com", headers={header: target})
        assert "server_info" not in reply.body
        if data_path is not DataPath.EXT_PROC:
            # Fail-static: a worker keeps routing on the last table the service published
            # (lua: its copy; module: the shared region); a worker that never had one
            # leaves the pick to Envoy's load balancer over the last EDS assignment, which
            # prefers us-east1 too.
            assert reply.served_by == EAST, reply
        else:
            # Fail closed: without the service's pick nothing is routed.
            assert reply.status == 503, reply

    assert sum(west.requests_served.values()) == west_before


async def test_unknown_host_gets_a_clear_404_and_no_upstream(
    regions: dict[str, Region], start_stack: StackFactory
) -> None:
    stack = await start_stack(seed(regions["east"].port, regions["west"].port))

    reply = await get(stack.settings.listen, "other.example.com")

    assert reply.status == 404
    assert "no ServiceEntry host matches" in reply.body
    assert reply.served_by == ""


async def test_authority_with_port_and_mixed_case_routes_like_the_bare_host(
    regions: dict[str, Region], start_stack: StackFactory
) -> None:
    stack = await start_stack(seed(regions["east"].port, regions["west"].port))

    for host in ("mydb.com:80", "MyDB.com"):
        reply = await get(stack.settings.listen, host)
        assert reply.served_by == EAST, (host, reply)
