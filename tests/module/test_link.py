"""The link: the module reconnects when the service goes away and comes back, keeps routing
from its region meanwhile, and counts the records it could not send."""

from __future__ import annotations

import asyncio
import os

import pytest

from extproc import wire
from extproc.sandbox import Mode
from extproc.sandbox.client import get

from .conftest import CLUSTER, RigFactory, ServiceEnd, wait_until

pytestmark = [pytest.mark.module, pytest.mark.e2e]


async def test_a_link_the_service_closes_is_made_again_with_the_same_region(
    start_rig: RigFactory, service_end: ServiceEnd
) -> None:
    rig = await start_rig()
    first = rig.link
    first.hang_up()

    second = await asyncio.to_thread(service_end.wait_link, 2, 3.0)
    second.write_entry(0, CLUSTER, [rig.host(1)])
    rig.upstreams[1].set_mode(Mode.FAIL_503)
    reply = await get(rig.listen, "mydb.com")
    [record] = await asyncio.to_thread(second.wait_records, 1)

    assert (second.pid, second.region_size) == (first.pid, first.region_size)
    assert os.fstat(second.memfd).st_ino == os.fstat(first.memfd).st_ino  # one region
    assert first.seq(0) == second.seq(0) == 2
    assert reply.served_by == rig.name(1)
    assert record.code == 503


async def test_without_the_service_the_table_holds_and_records_count_as_dropped(
    start_rig: RigFactory, service_end: ServiceEnd
) -> None:
    rig = await start_rig()
    link = rig.link
    link.write_entry(0, CLUSTER, [rig.host(1)])
    rig.upstreams[1].set_mode(Mode.FAIL_503)
    service_end.hang_up()

    replies = [await get(rig.listen, "mydb.com") for _ in range(4)]
    dropped = await wait_until(lambda: link.counter(wire.HEADER_DROPPED_OFFSET) == 4)
    back = ServiceEnd(service_end.path)
    try:
        again = await asyncio.to_thread(back.wait_link, 1, 3.0)
        await get(rig.listen, "mydb.com")
        records = await asyncio.to_thread(again.wait_records, 1)
    finally:
        back.close()

    assert [(r.status, r.served_by) for r in replies] == [(503, rig.name(1))] * 4  # fail-static
    assert dropped
    assert again.pid == link.pid
    assert [r.code for r in records] == [503]
    assert link.counter(wire.HEADER_DROPPED_OFFSET) == 4
