"""What only the fast path (Lua routing from published tables) promises."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from extproc.core.policy import Locality, Workload
from extproc.istio import load_policy_text
from extproc.sandbox import Mode
from extproc.sandbox.client import Reply, get
from extproc.server import stack as stack_module
from extproc.server.admin import endpoints_json
from extproc.server.app import ServiceApp
from extproc.server.stack import Stack
from extproc.settings import HostPort, Settings
from extproc.wire import DataPath

from .conftest import EAST, WEST, Region, StackFactory, lua_errors
from .seed_yaml import seed

pytestmark = pytest.mark.e2e

lua_only = pytest.mark.parametrize("data_path", [DataPath.LUA], ids=["lua"], indirect=True)
#: The paths that route on tables the service publishes into Envoy (lua: each worker's
#: copy; module: the shared region), and keep routing on them while it is down.
fail_static = pytest.mark.parametrize(
    "data_path", [DataPath.LUA, DataPath.MODULE], ids=["lua", "module"], indirect=True
)


def row(stack: Stack, address: str) -> dict[str, Any]:
    rows = {r["address"]: r for r in endpoints_json(stack.app.table, stack.app.now())}
    return rows[address]


async def loop(stack: Stack, count: int, pause_s: float = 0.0) -> list[Reply]:
    replies = []
    for _ in range(count):
        replies.append(await get(stack.settings.listen, "mydb.com"))
        if pause_s:
            await asyncio.sleep(pause_s)
    return replies


@fail_static
@pytest.mark.parametrize("workers", [1, 2])
async def test_a_refused_connection_costs_the_client_nothing(
    regions: dict[str, Region], start_stack: StackFactory, workers: int
) -> None:
    stack = await start_stack(
        seed(regions["east"].port, regions["west"].port, base="30s"), concurrency=workers
    )
    assert {r.served_by for r in await loop(stack, 4)} == {EAST}
    regions["east"].servers[0].set_mode(Mode.REFUSE)

    replies = await loop(stack, 10)

    assert [r.served_by for r in replies] == [WEST] * 10
    # The retried-away attempt was still reported: east is ejected by the brain.
    assert row(stack, f"127.0.0.11:{regions['east'].port}")["ejected"] is True


@fail_static
@pytest.mark.parametrize("workers", [1, 2])
async def test_503_answers_cost_at_most_one_request_per_worker(
    regions: dict[str, Region], start_stack: StackFactory, workers: int, data_path: DataPath
) -> None:
    stack = await start_stack(
        seed(regions["east"].port, regions["west"].port, base="30s"), concurrency=workers
    )
    await loop(stack, 4)
    regions["east"].servers[0].set_mode(Mode.FAIL_503)

    replies = await loop(stack, 12)

    failures = [r for r in replies if r.status != 200]
    # The module's workers share one table: the first failure steers them all.
    most = workers if data_path is DataPath.LUA else 1
    assert 1 <= len(failures) <= most, [r.served_by or r.status for r in replies]
    # Each Lua worker learns of the ejection from its own first failure, or from its next
    # refresh.
    assert all(r.served_by == WEST for r in replies if r.status == 200)


@lua_only
@pytest.mark.lua_errors_expected
async def test_a_failing_script_with_a_forged_header_cannot_pick_the_upstream(
    regions: dict[str, Region], start_stack: StackFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = stack_module.render_bootstrap

    def broken(*args: Any, **kwargs: Any) -> dict[str, Any]:
        bootstrap = real(*args, **kwargs)
        hcm = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
        lua = hcm["typed_config"]["http_filters"][0]["typed_config"]
        code = lua["default_source_code"]["inline_string"]
        lua["default_source_code"]["inline_string"] = code.replace(
            "function envoy_on_request(handle)\n",
            'function envoy_on_request(handle)\n  error("injected")\n',
        )
        return bootstrap

    monkeypatch.setattr(stack_module, "render_bootstrap", broken)
    stack = await start_stack(seed(regions["east"].port, regions["west"].port))
    assert stack.envoy is not None
    assert stack.envoy.admin_address is not None
    admin = "{}:{}".format(*stack.envoy.admin_address)
    west = f"127.0.0.12:{regions['west'].port}"

    for header in ("x-envoy-original-dst-host", "x-extproc-up", "x-envoy-upstream-alt-stat-name"):
        for target in (west, admin):
            reply = await get(stack.settings.listen, "mydb.com", headers={header: target})
            # Envoy's own load balancer on the EDS cluster picks: priority 0, us-east1.
            assert reply.served_by == EAST, reply
    assert await lua_errors(stack) > 0


@fail_static
async def test_the_brain_killed_and_restarted_under_a_request_loop_costs_no_request(
    regions: dict[str, Region], start_stack: StackFactory, dns: Any, data_path: DataPath
) -> None:
    text = seed(regions["east"].port, regions["west"].port)
    stack = await start_stack(text)
    old = stack.app
    replies = await loop(stack, 5, pause_s=0.02)

    await old.stop()
    replies += await loop(stack, 20, pause_s=0.02)  # fail-static on the last table
    new = ServiceApp(
        load_policy_text(text, "test.yaml"),
        Settings(
            socket_dir=old.settings.socket_dir,
            data_path=data_path,
            admin=HostPort("127.0.0.1", 0),
            dns_resolver=dns.address,
            workload=Workload(Locality.parse("us-east1")),
        ),
    )
    await new.start()
    stack.app = new
    replies += await loop(stack, 20, pause_s=0.02)
    # The new brain's tables win (versions only go up) and its ejections take effect.
    regions["east"].servers[0].set_mode(Mode.FAIL_503)
    after = await loop(stack, 10, pause_s=0.02)

    assert {r.status for r in replies} == {200}, [
        (r.status, r.body[:80]) for r in replies if r.status != 200
    ]
    assert {r.served_by for r in replies} == {EAST}
    assert [r.status for r in after].count(503) <= 2
    assert after[-1].served_by == WEST


@lua_only
async def test_a_worker_that_never_had_a_table_routes_by_envoys_own_balancer(
    regions: dict[str, Region], start_stack: StackFactory
) -> None:
    stack = await start_stack(seed(regions["east"].port, regions["west"].port))
    await stack.app.stop()  # before any request: no worker holds a table yet

    replies = [await get(stack.settings.listen, "mydb.com") for _ in range(6)]

    # Envoy's load balancer over the last EDS assignment: us-east1 is P0 there too.
    assert [r.served_by for r in replies] == [EAST] * 6


@pytest.mark.parametrize("dns_fault", ["down", "slow"])
async def test_the_brain_restarted_before_its_first_dns_answer_costs_no_request(
    regions: dict[str, Region],
    start_stack: StackFactory,
    dns: Any,
    data_path: DataPath,
    dns_fault: str,
) -> None:
    # Both data paths: the restarted service knows no host until DNS answers, and withholds
    # its clusters meanwhile, so Envoy keeps routing on what it holds (the Lua workers'
    # tables, the last EDS assignment). "down": no DNS server until after the restart;
    # "slow": every answer 1 s late, so the sync and EDS are up before the first one.
    # ext_proc fails closed while the service is down (documented), so there only the
    # requests from the restart on must all succeed; the module routes on the region's
    # tables meanwhile, as lua on its workers' copies.
    text = seed(regions["east"].port, regions["west"].port)
    stack = await start_stack(text)
    old = stack.app
    before = await loop(stack, 5, pause_s=0.02)

    if dns_fault == "down":
        await dns.stop()
    else:
        dns.delay_s = 1.0
    await old.stop()
    down = await loop(stack, 10, pause_s=0.02)
    new = ServiceApp(
        load_policy_text(text, "test.yaml"),
        Settings(
            socket_dir=old.settings.socket_dir,
            data_path=data_path,
            admin=HostPort("127.0.0.1", 0),
            dns_resolver=dns.address,
            workload=Workload(Locality.parse("us-east1")),
        ),
    )
    starting = asyncio.create_task(new.start())
    await asyncio.sleep(0.2)  # listening, its first queries not answered
    stack.app = new
    withheld = new.withheld(new.table.clusters["outbound|80||mydb.com"])
    restarted = await loop(stack, 25, pause_s=0.02)
    await starting
    if dns_fault == "down":
        await dns.start()
    # The resolver asks again within 5 s of a failure; requests keep flowing meanwhile.
    loop_time = asyncio.get_running_loop().time
    deadline = loop_time() + 10
    while not new.ready and loop_time() < deadline:
        restarted += await loop(stack, 5, pause_s=0.02)
    ready = new.ready
    restarted += await loop(stack, 10, pause_s=0.02)
    # Then the new brain's decisions take effect: an ejection moves traffic.
    regions["east"].servers[0].set_mode(Mode.FAIL_503)
    after = await loop(stack, 10, pause_s=0.02)

    assert withheld
    assert ready
    served = before + restarted + (down if data_path is not DataPath.EXT_PROC else [])
    assert {r.status for r in served} == {200}, [
        (r.status, r.body[:80]) for r in served if r.status != 200
    ]
    assert {r.served_by for r in served} == {EAST}
    assert [r.status for r in after].count(503) <= 2
    assert after[-1].served_by == WEST
