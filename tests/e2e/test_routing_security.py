"""A client never picks the upstream: not by a header, not when the service is down."""

from __future__ import annotations

import pytest

from extproc.render.bootstrap import DataPath
from extproc.sandbox.client import get

from .conftest import EAST, Region, StackFactory
from .seed_yaml import seed

pytestmark = pytest.mark.e2e

FORGED_HEADERS = [
    # ORIGINAL_DST's own header, our metadata key as a header, and a cluster-header guess.
    "x-envoy-original-dst-host",
    "x-extproc-host",
    "x-route-cluster",
]


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
        if data_path is DataPath.LUA:
            # Fail-static: a worker keeps routing on the last table the service published;
            # a worker that never had one answers 503 "no routing table".
            assert reply.served_by == EAST or reply.body == "no routing table\n", reply
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
