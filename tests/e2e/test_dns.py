"""Endpoint names are resolved like Istio's STRICT_DNS cluster: per IP, honouring TTLs."""

from __future__ import annotations

import asyncio

import pytest

from extproc.sandbox import DnsResponder, Mode, StandIn
from extproc.sandbox.client import get
from extproc.server.admin import endpoints_json
from extproc.server.stack import Stack

from .conftest import EAST, Region, StackFactory
from .seed_yaml import seed

pytestmark = pytest.mark.e2e


def addresses(stack: Stack) -> dict[str, dict[str, object]]:
    return {r["address"]: r for r in endpoints_json(stack.app.table, stack.app.now())}


async def wait_for(predicate: object, timeout_s: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate():  # type: ignore[operator]
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.1)


async def test_a_name_that_re_resolves_moves_traffic_and_keeps_state_of_staying_ips(
    regions: dict[str, Region], start_stack: StackFactory, dns: DnsResponder
) -> None:
    port = regions["east"].port
    old = f"127.0.0.11:{port}"
    new = f"127.0.0.13:{port}"
    replacement = StandIn(f"{EAST} (second address)", "127.0.0.13", port)
    await replacement.start()
    try:
        stack = await start_stack(seed(port, regions["west"].port, base="30s"))
        regions["east"].servers[0].set_mode(Mode.FAIL_503)
        assert (await get(stack.settings.listen, "mydb.com")).status == 503
        assert addresses(stack)[old]["ejected"] is True

        # The name now answers both IPs (TTL 1 s): the old IP keeps its ejection.
        dns.set_records(EAST, ["127.0.0.11", "127.0.0.13"])
        await wait_for(lambda: new in addresses(stack))
        assert addresses(stack)[old]["ejected"] is True
        assert addresses(stack)[new]["ejected"] is False
        # One of two P0 hosts ejected: 70 % to the new address, 30 % spill to us-west.
        served = {(await get(stack.settings.listen, "mydb.com")).served_by for _ in range(20)}
        assert f"{EAST} (second address)" in served
        assert EAST not in served

        # Then only the new IP: the old host and its state are gone.
        dns.set_records(EAST, ["127.0.0.13"])
        await wait_for(lambda: old not in addresses(stack))
        assert addresses(stack)[new]["priority"] == 0
    finally:
        await replacement.stop()


async def test_a_name_with_no_address_leaves_its_priority_empty_and_traffic_moves_on(
    regions: dict[str, Region], start_stack: StackFactory, dns: DnsResponder
) -> None:
    dns.set_records(EAST, [])  # NXDOMAIN, like Istio's fake-should-fail.example.com case
    stack = await start_stack(seed(regions["east"].port, regions["west"].port))

    replies = [await get(stack.settings.listen, "mydb.com") for _ in range(4)]

    assert {r.status for r in replies} == {200}
    assert all(r.served_by != EAST for r in replies)
    assert all(not row["ejected"] for row in addresses(stack).values())
