"""The module routes as the entry says, and reports what happened: a real Envoy, loopback
stand-in upstreams, and a stand-in for the service's end of the link."""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter

import pytest

from extproc import wire
from extproc.core.outcome import (
    UPSTREAM_CONNECTION_FAILURE,
    UPSTREAM_CONNECTION_TERMINATION,
    UPSTREAM_PROTOCOL_ERROR,
    UPSTREAM_REMOTE_RESET,
)
from extproc.sandbox import Mode
from extproc.sandbox.client import get
from extproc.wire import NO_HOST_INDEX, ModuleLb

from .conftest import CLUSTER, Host, RigFactory, one_connection, wait_until

pytestmark = [pytest.mark.module, pytest.mark.e2e]

ATTEMPT = wire.RECORD_KIND_ATTEMPT
RESETS = UPSTREAM_REMOTE_RESET | UPSTREAM_CONNECTION_TERMINATION | UPSTREAM_PROTOCOL_ERROR


async def fresh_connections(address: tuple[str, int], count: int) -> list[str]:
    """``count`` requests, each on a new connection (so on either worker)."""
    return [(await get(address, "mydb.com")).served_by for _ in range(count)]


async def test_requests_go_to_the_only_host_of_the_entry(start_rig: RigFactory) -> None:
    rig = await start_rig()
    rig.link.write_entry(0, CLUSTER, [rig.host(1)])

    served = await fresh_connections(rig.listen, 20)

    assert served == [rig.name(1)] * 20  # Envoy's own round robin would alternate


PICKING = [lb for lb in ModuleLb if lb is not ModuleLb.ENVOY]


@pytest.mark.parametrize("lb", PICKING, ids=[lb.name for lb in PICKING])
async def test_weights_of_1_and_1000_send_all_but_a_few_to_the_heavy_host(
    start_rig: RigFactory, lb: ModuleLb
) -> None:
    rig = await start_rig()
    rig.link.write_entry(0, CLUSTER, [rig.host(0, weight=1), rig.host(1, weight=1000)], lb=lb)

    served = Counter(name for _, name in await one_connection(rig.listen, 150))
    served += Counter(await fresh_connections(rig.listen, 150))

    assert served[rig.name(1)] >= 297, served
    assert set(served) <= {rig.name(0), rig.name(1)}


async def test_an_entry_envoy_balances_sets_no_override(start_rig: RigFactory) -> None:
    # lb ENVOY (a consistent-hash ring, slow start): Envoy's own balancer picks, whatever
    # the entry's weights say.
    rig = await start_rig()
    entry = [rig.host(0, weight=1), rig.host(1, weight=1000)]
    rig.link.write_entry(0, CLUSTER, entry, lb=ModuleLb.ENVOY)

    served = Counter(await fresh_connections(rig.listen, 100))

    assert served[rig.name(0)] >= 25, served
    assert served[rig.name(1)] >= 25, served


async def test_round_robin_alternates_on_each_worker(start_rig: RigFactory) -> None:
    rig = await start_rig()
    rig.link.write_entry(0, CLUSTER, [rig.host(0), rig.host(1)], lb=ModuleLb.ROUND_ROBIN)

    # A keep-alive connection stays on one worker: its sequential requests see that worker's
    # rotation alone. Four connections land on both workers.
    runs = [[name for _, name in await one_connection(rig.listen, 10)] for _ in range(4)]

    for run in runs:
        assert set(run) == {rig.name(0), rig.name(1)}
        assert all(a != b for a, b in itertools.pairwise(run)), run


async def test_a_table_change_moves_the_next_request(start_rig: RigFactory) -> None:
    rig = await start_rig()
    expected, served = [], []

    for step in range(10):
        target = step % 2
        rig.link.write_entry(0, CLUSTER, [rig.host(target)])
        expected.append(rig.name(target))
        served.append((await get(rig.listen, "mydb.com")).served_by)

    assert served == expected


async def test_a_503_host_produces_records_with_the_outcome(start_rig: RigFactory) -> None:
    rig = await start_rig()
    rig.upstreams[1].set_mode(Mode.FAIL_503)
    rig.link.write_entry(0, CLUSTER, [rig.host(1)])

    replies = [await get(rig.listen, "mydb.com") for _ in range(5)]
    records = await asyncio.to_thread(rig.link.wait_records, 5)

    assert [r.status for r in replies] == [503] * 5
    assert len(records) == 5
    b = rig.host(1)
    for record in records:
        assert record.worker < 2
        assert (record.slot, record.version, record.host) == (0, 1, 0)
        assert (record.host_slot, record.addr, record.kind) == (b.slot, b.addr, ATTEMPT)
        assert (record.code, record.flags) == (503, 0)
        assert record.successes_before == 0
        assert record.reserved == bytes(len(record.reserved))
    assert all(len(raw) == wire.RECORD_SIZE for raw in rig.link.raw_records)


async def test_successes_are_counted_in_the_workers_row(start_rig: RigFactory) -> None:
    rig = await start_rig()
    a = rig.host(0)
    rig.link.write_entry(0, CLUSTER, [a])

    served = await fresh_connections(rig.listen, 12)
    counted = await wait_until(lambda: sum(rig.link.successes(w, a.slot) for w in (0, 1)) == 12)

    assert served == [rig.name(0)] * 12
    assert counted
    assert all(rig.link.successes(w, a.slot) == 0 for w in range(2, wire.MAX_WORKERS))
    assert rig.link.records == []


async def test_a_failure_after_successes_carries_the_successes_counted_before(
    start_rig: RigFactory,
) -> None:
    rig = await start_rig()
    a = rig.host(0)
    rig.link.write_entry(0, CLUSTER, [a])
    for _ in range(3):
        await one_connection(rig.listen, 4)  # 4 successes on one worker each time
    rig.upstreams[0].set_mode(Mode.FAIL_503)

    await one_connection(rig.listen, 1)
    [record] = await asyncio.to_thread(rig.link.wait_records, 1)

    assert record.code == 503
    assert record.successes_before == rig.link.successes(record.worker, a.slot)
    assert sum(rig.link.successes(w, a.slot) for w in (0, 1)) == 12


async def test_each_attempt_of_a_retried_request_is_reported_on_its_own_host(
    start_rig: RigFactory,
) -> None:
    rig = await start_rig(retries=1)
    rig.upstreams[1].set_mode(Mode.FAIL_503)
    a, b = rig.host(0, weight=1), rig.host(1, weight=1000)
    rig.link.write_entry(0, CLUSTER, [a, b])

    reply = await get(rig.listen, "mydb.com")
    [record] = await asyncio.to_thread(rig.link.wait_records, 1)
    counted = await wait_until(lambda: sum(rig.link.successes(w, a.slot) for w in (0, 1)) == 1)

    assert (reply.status, reply.served_by) == (200, rig.name(0))
    # The first attempt, on the heavy host: its 503. The retry's 200 on the other: counted.
    assert (record.host, record.host_slot, record.addr) == (1, b.slot, b.addr)
    assert (record.code, record.flags) == (503, 0)
    assert counted


async def test_every_attempt_of_three_is_reported_the_middle_one_included(
    start_rig: RigFactory,
) -> None:
    # Each endpoint in a priority of its own, and a retry leaves the priorities tried:
    # attempt 1 on up0 (the entry's host), 2 on up1, 3 on up2, none of them in the entry.
    rig = await start_rig(upstreams=3, retries=2, priorities=True)
    rig.upstreams[0].set_mode(Mode.REFUSE)
    rig.upstreams[1].set_mode(Mode.FAIL_503)
    a, b, c = rig.host(0), rig.host(1), rig.host(2)
    rig.link.write_entry(0, CLUSTER, [a])

    reply = await get(rig.listen, "mydb.com")
    records = await asyncio.to_thread(rig.link.wait_records, 3)

    assert (reply.status, reply.served_by) == (200, rig.name(2))
    assert [(r.addr, r.host, r.host_slot, r.code) for r in records] == [
        (a.addr, 0, a.slot, 0),  # refused: no response
        (b.addr, NO_HOST_INDEX, wire.NO_HOST_SLOT, 503),  # the middle attempt
        (c.addr, NO_HOST_INDEX, wire.NO_HOST_SLOT, 200),  # a success, but not an entry's host
    ]
    assert [bool(r.flags & UPSTREAM_CONNECTION_FAILURE) for r in records] == [True, False, False]
    assert [r.flags for r in records[1:]] == [0, 0]


async def test_a_connect_failure_is_reported_with_its_flags(start_rig: RigFactory) -> None:
    rig = await start_rig()
    rig.upstreams[1].set_mode(Mode.REFUSE)
    b = rig.host(1)
    rig.link.write_entry(0, CLUSTER, [b])

    reply = await get(rig.listen, "mydb.com")
    [record] = await asyncio.to_thread(rig.link.wait_records, 1)

    assert reply.status == 503
    assert (record.code, record.host_slot, record.addr) == (0, b.slot, b.addr)  # no response
    assert record.flags & UPSTREAM_CONNECTION_FAILURE


async def test_a_reset_after_the_head_is_reported_with_the_heads_status_and_its_flag(
    start_rig: RigFactory,
) -> None:
    rig = await start_rig()
    rig.upstreams[0].set_mode(Mode.RESET)
    a = rig.host(0)
    rig.link.write_entry(0, CLUSTER, [a])

    await get(rig.listen, "mydb.com")
    [record] = await asyncio.to_thread(rig.link.wait_records, 1)

    assert (record.code, record.host_slot) == (200, a.slot)
    assert record.flags & RESETS


async def test_the_entrys_error_codes_decide_what_is_counted_and_what_is_a_record(
    start_rig: RigFactory,
) -> None:
    rig = await start_rig()
    a, b = rig.host(0), rig.host(1)
    rig.upstreams[1].set_mode(Mode.FAIL_500)
    rig.link.write_entry(0, CLUSTER, [b], error_codes=[502, 503, 504])  # gateway errors

    await get(rig.listen, "mydb.com")  # a 500: no error code here, so a success
    rig.link.write_entry(0, CLUSTER, [a], error_codes=[200])
    await get(rig.listen, "mydb.com")  # a 200 whose bit is set: a record
    records = await asyncio.to_thread(rig.link.wait_records, 1)
    await asyncio.sleep(0.2)

    assert [(r.code, r.host_slot) for r in records] == [(200, a.slot)]
    assert sum(rig.link.successes(w, b.slot) for w in (0, 1)) == 1
    assert sum(rig.link.successes(w, a.slot) for w in (0, 1)) == 0


async def test_no_override_means_no_record_and_no_count(start_rig: RigFactory) -> None:
    rig = await start_rig()
    hosts = [rig.host(0), rig.host(1)]
    rig.upstreams[1].set_mode(Mode.FAIL_503)
    rig.link.write_entry(0, CLUSTER, hosts, flags=wire.ENTRY_FLAG_WITHHELD)

    served = Counter(name for _, name in await one_connection(rig.listen, 10))
    await asyncio.sleep(0.2)

    assert served == {rig.name(0): 5, rig.name(1): 5}  # Envoy's own round robin
    assert rig.link.records == []
    assert sum(rig.link.successes(w, h.slot) for w in (0, 1) for h in hosts) == 0


async def test_an_override_envoy_refuses_is_counted_and_envoy_decides(
    start_rig: RigFactory,
) -> None:
    rig = await start_rig()
    # Passes the module's character check, but is no IP address: Envoy says no.
    rig.link.write_entry(0, CLUSTER, [Host("1:2", 1, 7)])

    served = Counter(name for _, name in await one_connection(rig.listen, 10))
    records = await asyncio.to_thread(rig.link.wait_records, 10)

    assert served == {rig.name(0): 5, rig.name(1): 5}
    assert rig.link.counter(wire.HEADER_OVERRIDES_REFUSED_OFFSET) == 10
    # Each attempt still reaches the service, on the host Envoy chose: none of the entry's,
    # so not a counter of the module's but a record.
    assert Counter(r.addr for r in records) == {rig.host(0).addr: 5, rig.host(1).addr: 5}
    assert {(r.host, r.code) for r in records} == {(NO_HOST_INDEX, 200)}


async def test_a_cluster_without_an_entry_is_left_to_envoy(start_rig: RigFactory) -> None:
    rig = await start_rig()
    rig.link.write_entry(3, "outbound|80||other.com", [rig.host(1)])

    served = Counter(name for _, name in await one_connection(rig.listen, 10))

    assert served == {rig.name(0): 5, rig.name(1): 5}


async def test_a_first_entry_is_taken_up_within_the_lookup_hold(start_rig: RigFactory) -> None:
    rig = await start_rig()
    before = Counter(name for _, name in await one_connection(rig.listen, 10))  # no entry yet
    rig.link.write_entry(0, CLUSTER, [rig.host(1)])
    await asyncio.sleep(0.05)  # a "no entry" answer holds 10 ms per worker

    after = await fresh_connections(rig.listen, 20)

    assert before == {rig.name(0): 5, rig.name(1): 5}
    assert after == [rig.name(1)] * 20


async def test_without_the_routers_attempt_log_the_module_says_so_once(
    start_rig: RigFactory,
) -> None:
    rig = await start_rig(upstream_log=False)
    rig.upstreams[1].set_mode(Mode.FAIL_503)
    rig.link.write_entry(0, CLUSTER, [rig.host(1)])

    replies = [await get(rig.listen, "mydb.com") for _ in range(3)]
    await asyncio.sleep(0.2)

    assert [r.status for r in replies] == [503] * 3  # still routed as the entry says
    assert rig.link.records == []
    assert rig.envoy.log().count(f'no access logger "{wire.MODULE_ATTEMPT_LOGGER}"') == 1
