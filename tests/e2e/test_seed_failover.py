"""The seed's acceptance scenarios on a real Envoy, request by request."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from extproc.sandbox import Mode, StandIn
from extproc.sandbox.client import Reply, get
from extproc.server.stack import Stack
from extproc.wire import DataPath

from .conftest import EAST, WEST, Region, StackFactory
from .seed_yaml import seed

pytestmark = pytest.mark.e2e


async def curl_loop(
    stack: Stack, count: int, pause_s: float = 0.0, **kwargs: object
) -> list[Reply]:
    replies = []
    for _ in range(count):
        replies.append(await get(stack.settings.listen, "mydb.com", **kwargs))  # type: ignore[arg-type]
        if pause_s:
            await asyncio.sleep(pause_s)
    return replies


def served(replies: list[Reply]) -> list[str]:
    return [r.served_by or f"<{r.status}>" for r in replies]


def host_row(stack: Stack, address: str) -> dict[str, object]:
    from extproc.server.admin import endpoints_json

    rows = {r["address"]: r for r in endpoints_json(stack.app.table, stack.app.now())}
    return rows[address]


async def test_without_outlier_detection_both_regions_serve(
    regions: dict[str, Region], start_stack: StackFactory
) -> None:
    stack = await start_stack(seed(regions["east"].port, regions["west"].port, outlier=False))
    replies = await curl_loop(stack, 20)
    counts = Counter(served(replies))
    assert set(counts) == {EAST, WEST}, counts


async def test_with_outlier_detection_only_the_workload_region_serves(
    regions: dict[str, Region], start_stack: StackFactory
) -> None:
    stack = await start_stack(seed(regions["east"].port, regions["west"].port))
    replies = await curl_loop(stack, 10)
    assert served(replies) == [EAST] * 10


async def test_workload_in_us_west_prefers_us_west(
    regions: dict[str, Region], start_stack: StackFactory
) -> None:
    stack = await start_stack(seed(regions["east"].port, regions["west"].port), locality="us-west")
    assert served(await curl_loop(stack, 6)) == [WEST] * 6


async def test_refused_connection_fails_over_losing_no_request(
    regions: dict[str, Region], start_stack: StackFactory
) -> None:
    stack = await start_stack(seed(regions["east"].port, regions["west"].port, base="30s"))
    assert served(await curl_loop(stack, 2)) == [EAST, EAST]
    regions["east"].servers[0].set_mode(Mode.REFUSE)

    replies = await curl_loop(stack, 5)

    # Envoy retries the refused attempt on the failover priority: the client sees none (the
    # seed shows one failure; Istio's Envoy, measured, fails none either).
    assert served(replies) == [WEST] * 5
    # The retried-away attempt still counts as us-east1's failure.
    east_row = host_row(stack, f"127.0.0.11:{regions['east'].port}")
    assert east_row["ejected"] is True
    assert east_row["num_ejections"] == 1


async def test_503_answers_cost_one_request_then_fail_over(
    regions: dict[str, Region], start_stack: StackFactory
) -> None:
    stack = await start_stack(seed(regions["east"].port, regions["west"].port, base="30s"))
    regions["east"].servers[0].set_mode(Mode.FAIL_503)

    replies = await curl_loop(stack, 5)

    assert replies[0].status == 503
    assert replies[0].served_by == EAST  # the upstream's own answer reaches the client
    assert served(replies[1:]) == [WEST] * 4


async def test_traffic_fails_back_after_the_ejection(
    regions: dict[str, Region], start_stack: StackFactory
) -> None:
    stack = await start_stack(
        seed(regions["east"].port, regions["west"].port, interval="0.5s", base="1s")
    )
    east = regions["east"].servers[0]
    east.set_mode(Mode.FAIL_503)
    first = await curl_loop(stack, 2)
    assert [r.status for r in first] == [503, 200]
    east.set_mode(Mode.HEALTHY)

    # Ejected for base x 1 = 1s, un-ejected at the first 0.5s sweep after that (the fast
    # path adds up to one 100 ms table TTL).
    await asyncio.sleep(0.6)
    assert served(await curl_loop(stack, 2)) == [WEST, WEST]
    await asyncio.sleep(1.2)
    assert served(await curl_loop(stack, 5)) == [EAST] * 5
    assert host_row(stack, f"127.0.0.11:{regions['east'].port}")["ejected"] is False


async def test_a_dead_endpoint_is_probed_once_per_unejection(
    regions: dict[str, Region], start_stack: StackFactory
) -> None:
    stack = await start_stack(
        seed(regions["east"].port, regions["west"].port, interval="0.2s", base="0.5s")
    )
    regions["east"].servers[0].set_mode(Mode.FAIL_503)

    replies = await curl_loop(stack, 14, pause_s=0.1)

    # Ejections of 0.5s then 1.0s: two failed probes in about 1.5s, every other request on west.
    failures = [r for r in replies if r.status != 200]
    assert len(failures) == 2, served(replies)
    assert all(r.served_by == WEST for r in replies if r.status == 200)
    assert host_row(stack, f"127.0.0.11:{regions['east'].port}")["num_ejections"] == 2


async def test_each_ip_of_a_name_is_its_own_host(
    regions: dict[str, Region], start_stack: StackFactory, dns: object, data_path: DataPath
) -> None:
    # A second us-east-1 address on the same port: the name now resolves to two IPs.
    port = regions["east"].port
    extra = StandIn(EAST, "127.0.0.13", port)
    await extra.start()
    try:
        dns.set_records(EAST, ["127.0.0.11", "127.0.0.13"])  # type: ignore[attr-defined]
        stack = await start_stack(seed(port, regions["west"].port, base="30s"))
        rows = {(r["address"], r["priority"]) for r in _rows(stack)}
        assert {(f"127.0.0.11:{port}", 0), (f"127.0.0.13:{port}", 0)} <= rows

        regions["east"].servers[0].set_mode(Mode.FAIL_503)
        replies = await curl_loop(stack, 60)

        # One of two P0 hosts ejected: P0 health 70 %, so 70/30 between 127.0.0.13 and west.
        failures = [r for r in replies if r.status != 200]
        # ext_proc: the tripping request; lua: at most one per Envoy worker (2 here).
        assert len(failures) <= (2 if data_path is DataPath.LUA else 1)
        after = replies[replies.index(failures[0]) + 1 :] if failures else replies
        counts = Counter(served(after))
        assert set(counts) == {EAST, WEST}, counts
        assert 0.45 < counts[EAST] / len(after) < 0.95, counts
        assert host_row(stack, f"127.0.0.11:{port}")["ejected"] is True
        assert host_row(stack, f"127.0.0.13:{port}")["ejected"] is False
    finally:
        await extra.stop()


def _rows(stack: Stack) -> list[dict[str, object]]:
    from extproc.server.admin import endpoints_json

    return endpoints_json(stack.app.table, stack.app.now())
