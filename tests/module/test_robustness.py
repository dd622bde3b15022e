"""The region is untrusted input: whatever lands in it, under load, Envoy keeps serving from the
cluster's hosts, and an entry that fails validation is refused and counted."""

from __future__ import annotations

import asyncio
import http.client
import random
import struct
import threading
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest

from extproc import wire
from extproc.sandbox.client import get

from .conftest import CLUSTER, Host, KeepAlive, Link, Rig, RigFactory, entry_bytes

pytestmark = [pytest.mark.module, pytest.mark.e2e]


@asynccontextmanager
async def load(
    address: tuple[str, int], connections: int = 4
) -> AsyncIterator[Counter[tuple[int, str]]]:
    """Requests in a loop on ``connections`` keep-alive connections until the block ends;
    yields the (status, served by) counts so far. A failed request counts as status 0. The
    threads are joined off the event loop: the stand-ins answer on it."""
    stop = threading.Event()
    seen: Counter[tuple[int, str]] = Counter()
    lock = threading.Lock()

    def run() -> None:
        client = KeepAlive(address)
        while not stop.is_set():
            try:
                outcome = client.get()
            except (OSError, http.client.HTTPException):
                outcome = (0, "")
                client.close()
                client = KeepAlive(address)
            with lock:
                seen[outcome] += 1
        client.close()

    threads = [threading.Thread(target=run, daemon=True) for _ in range(connections)]
    for thread in threads:
        thread.start()
    try:
        yield seen
    finally:
        stop.set()
        for thread in threads:
            await asyncio.to_thread(thread.join, 15)


async def warm(rig: Rig, requests: int = 40) -> Counter[str]:
    """Requests on fresh connections, so that both workers take a snapshot."""
    return Counter([(await get(rig.listen, "mydb.com")).served_by for _ in range(requests)])


def corruptions(link: Link, rng: random.Random) -> list[Callable[[], None]]:
    """Ways a broken or hostile writer can scribble on the region."""
    region = link.region
    entry = link.entry_offset(0)

    def splat(offset: int, size: int) -> None:
        size = min(size, len(region) - offset)
        region[offset : offset + size] = rng.randbytes(size)

    def bumped(offset: int, size: int) -> Callable[[], None]:
        def run() -> None:  # random bytes, then a seq the module will take as a new version
            splat(offset, size)
            struct.pack_into("<Q", region, entry, (link.seq(0) | 1) + 1)

        return run

    return [
        lambda: splat(entry, wire.ENTRY_SIZE),  # the whole entry, seq included
        lambda: splat(entry + 8, wire.ENTRY_SIZE - 8),  # the body under an unchanged seq
        bumped(entry + 16, 8),  # name_len, lb, flags, n_hosts
        bumped(entry + wire.ENTRY_HOSTS_OFFSET, rng.randrange(1, 512)),  # the hosts
        bumped(entry + wire.ENTRY_HOSTS_OFFSET + rng.randrange(0, 4096), 8),
        lambda: splat(wire.ENTRIES_OFFSET + rng.randrange(wire.MAX_SERVICES) * 4384, 4384),
        lambda: splat(0, wire.HEADER_SIZE),
        lambda: splat(wire.COUNTERS_OFFSET + rng.randrange(0, 4096 * 8 * 2), 4096),
        lambda: splat(rng.randrange(len(region)), rng.randrange(1, 8192)),
    ]


async def test_random_bytes_under_load_never_crash_envoy_nor_leave_the_cluster(
    start_rig: RigFactory,
) -> None:
    rig = await start_rig(upstreams=3)
    names = {rig.name(i) for i in range(3)}
    good = [rig.host(0), rig.host(1)]
    rng = random.Random(20261202)
    rig.link.write_entry(0, CLUSTER, good)
    for slot in range(1, 8):
        rig.link.write_entry(slot, f"outbound|80||other{slot}.com", good)
    ways = corruptions(rig.link, rng)

    async with load(rig.listen) as seen:
        for step in range(300):
            rng.choice(ways)()
            if step % 25 == 24:
                rig.link.write_entry(0, CLUSTER, good)  # a good table now and then
            await asyncio.sleep(0.01)
        served_during = sum(seen.values())
    rig.link.write_entry(0, CLUSTER, [rig.host(2)])
    after = await warm(rig, 10)

    assert rig.envoy.alive, rig.envoy.log()[-3000:]
    assert "Caught" not in rig.envoy.log()
    assert served_during > 100
    assert {status for status, _ in seen} == {200}, seen
    assert {name for _, name in seen} <= names
    assert after == {rig.name(2): 10}  # and the module follows the next good table


async def test_a_torn_seq_keeps_the_last_good_table(start_rig: RigFactory) -> None:
    rig = await start_rig()
    rig.link.write_entry(0, CLUSTER, [rig.host(0)])
    assert await warm(rig) == {rig.name(0): 40}
    offset = rig.link.entry_offset(0)
    # A writer that died mid-write: seq odd, half a table of another host behind it.
    torn = entry_bytes(CLUSTER, [rig.host(1)], seq=0, version=99)
    struct.pack_into("<Q", rig.link.region, offset, rig.link.seq(0) + 1)
    rig.link.region[offset + 8 : offset + 2000] = torn[8:2000]

    async with load(rig.listen) as seen:
        await asyncio.sleep(1.0)
    after_tear = await warm(rig)

    assert set(seen) == {(200, rig.name(0))}, seen
    assert sum(seen.values()) > 50  # no spinning: it stays fast
    assert after_tear == {rig.name(0): 40}
    assert rig.link.counter(wire.HEADER_BAD_SNAPSHOTS_OFFSET) == 0


#: One field out of bounds each, as (offset in the entry, struct format, value); host 1 of 4.
_HOST1 = wire.ENTRY_HOSTS_OFFSET + wire.HOST_SIZE
WILD: dict[str, list[tuple[int, str, int]]] = {
    "n_hosts": [(20, "<I", 60_000)],
    "name_len": [(16, "<H", 300)],
    "lb": [(18, "<B", 9)],
    "flags": [(19, "<B", 0x80)],
    "choice_count": [(18, "<B", wire.ModuleLb.LEAST_REQUEST), (104, "<I", 0)],
    "weight": [(_HOST1, "<I", 0)],
    "weight_total": [(_HOST1 - wire.HOST_SIZE, "<I", 2**31), (_HOST1, "<I", 2**31)],
    "host_slot": [(_HOST1 + 4, "<H", wire.HOST_SLOTS)],
    "addr_len": [(_HOST1 + 6, "<B", 200)],
    "addr": [(_HOST1 + 8, "<B", ord("x"))],
}


def wild(base: bytes, field: str) -> bytes:
    """``base`` with one field out of bounds, its name intact."""
    e = bytearray(base)
    for offset, fmt, value in WILD[field]:
        struct.pack_into(fmt, e, offset, value)
    return bytes(e)


async def test_an_entry_with_a_wild_field_is_refused_and_counted(start_rig: RigFactory) -> None:
    rig = await start_rig()
    a = rig.host(0)
    others = [Host(f"127.0.0.{30 + i}:80", 1, 200 + i) for i in range(3)]
    refused_per_field = {}

    for field in WILD:
        rig.link.write_entry(0, CLUSTER, [a])
        before_warm = await warm(rig)
        bad_before = rig.link.counter(wire.HEADER_BAD_SNAPSHOTS_OFFSET)
        base = entry_bytes(CLUSTER, [rig.host(1), *others], seq=0, version=1000)
        rig.link.write_raw(0, wild(base, field))

        served = await warm(rig)
        refused_per_field[field] = rig.link.counter(wire.HEADER_BAD_SNAPSHOTS_OFFSET) - bad_before

        assert before_warm == served == {rig.name(0): 40}, field  # the last good table
    # Each worker refuses a bad entry once (both workers saw it: 40 fresh connections).
    assert refused_per_field == dict.fromkeys(WILD, 2)
    assert rig.envoy.alive
