"""Three proxies behind one Redis (``--shared-state``), on every data path: one proxy's
failure fails the whole fleet over, and with Redis gone each proxy learns alone again."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from extproc.core.policy import Locality, Workload
from extproc.demo import free_port
from extproc.istio import load_policy_text
from extproc.sandbox import DnsResponder, Mode
from extproc.server.stack import Stack
from extproc.settings import HostPort, Settings
from extproc.wire import DataPath
from tests.integration.test_module_link import until
from tests.redis_server import RedisServer, needs_redis

from .conftest import WEST, Region
from .seed_yaml import seed
from .test_seed_failover import curl_loop, host_row, served

pytestmark = [pytest.mark.e2e, needs_redis]

FleetFactory = Callable[[str], Awaitable[Stack]]


@pytest.fixture
async def fleet(
    redis: RedisServer, dns: DnsResponder, data_path: DataPath, regions: dict[str, Region]
) -> AsyncIterator[FleetFactory]:
    """Start one proxy (``Stack``) of the fleet ``shop`` sharing ``redis``."""
    stacks: list[Stack] = []
    yaml_text = seed(regions["east"].port, regions["west"].port, base="30s")

    async def start(name: str) -> Stack:
        stack = Stack(
            load_policy_text(yaml_text, "seed.yaml"),
            Settings(
                listen=HostPort("127.0.0.1", free_port()),
                admin=HostPort("127.0.0.1", 0),
                dns_resolver=dns.address,
                data_path=data_path,
                workload=Workload(Locality.parse("us-east1")),
                shared_state=redis.url,
                fleet="shop",
                proxy_id=name,
            ),
        )
        await stack.start()
        stacks.append(stack)
        return stack

    yield start
    for stack in stacks:
        await stack.stop()


def _east_ejected(stack: Stack, regions: dict[str, Region]) -> bool:
    return host_row(stack, f"127.0.0.11:{regions['east'].port}")["ejected"] is True


async def test_one_proxys_failure_fails_the_fleet_over_with_no_other_request_to_it(
    fleet: FleetFactory, regions: dict[str, Region]
) -> None:
    a, b, c = await fleet("a"), await fleet("b"), await fleet("c")
    for stack in (a, b, c):
        assert stack.app.fleet is not None
        await until(lambda s=stack: s.app.fleet.connected)  # type: ignore[union-attr]
    east = regions["east"].servers[0]
    east.set_mode(Mode.FAIL_503)
    # a sees us-east1's 503 (threshold 1: one failed request, as on Istio) and ejects it.
    [first] = await curl_loop(a, 1)
    assert first.status == 503
    await until(lambda: _east_ejected(b, regions) and _east_ejected(c, regions))
    # Their brains push it to their Envoys at once (EDS, and the lua or module tables).
    await asyncio.sleep(0.2)
    before = sum(east.requests_served.values())
    # b and c never saw a failure of their own: they send us-east1 nothing, and fail none.
    for stack in (b, c):
        assert served(await curl_loop(stack, 10, pause_s=0.01)) == [WEST] * 10
    assert sum(east.requests_served.values()) == before
    row = host_row(b, f"127.0.0.11:{regions['east'].port}")
    assert row["ejected"] is True


async def test_with_redis_gone_each_proxy_fails_over_by_itself(
    fleet: FleetFactory, redis: RedisServer, regions: dict[str, Region]
) -> None:
    a, b = await fleet("a"), await fleet("b")
    for stack in (a, b):
        await until(lambda s=stack: s.app.fleet.connected)  # type: ignore[union-attr]
    await redis.kill()
    regions["east"].servers[0].set_mode(Mode.FAIL_503)
    # Each proxy learns alone, as without a fleet: one 503 each, then us-west.
    for stack in (a, b):
        replies = await curl_loop(stack, 4, pause_s=0.05)
        assert [r.status for r in replies] == [503, 200, 200, 200]
        assert served(replies[1:]) == [WEST] * 3
