"""Fuzzing the module path's link (``extproc.server.module_link``): what a module may send.

Messages are attempt records as the C shim sends them for the entries the service wrote
(every field drawn: statuses, flags, host indexes, slots and addresses, versions), near
misses of them (one byte flipped), random bytes and messages of any length, over a real
``SOCK_SEQPACKET`` link from the Python stand-in of the module (``tests/module_peer.py``).
Whatever arrives:

- the service applies it or drops it, never fails on it (no ``module.record_error``), and
  the link stays up;
- no host is added to or removed from any service, and no outcome is counted in the
  metrics for a host that is not one of that service's hosts;
- every region entry still reads back as a table of its service's hosts only.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import structlog
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from extproc.core.outcome import (
    UPSTREAM_CONNECTION_FAILURE,
    UPSTREAM_OVERFLOW,
    UPSTREAM_PROTOCOL_ERROR,
    UPSTREAM_REMOTE_RESET,
)
from extproc.core.table import ServiceTable
from extproc.server.metrics import Metrics
from extproc.server.module_link import ModuleLinks
from extproc.wire import (
    HOST_SLOTS,
    MAX_HOSTS,
    MAX_SERVICES,
    MAX_WORKERS,
    MODULE_SOCKET,
    NO_HOST_INDEX,
    NO_HOST_SLOT,
    RECORD_SIZE,
)
from tests.fuzz import world
from tests.module_peer import ModulePeer, record


class _Rig:
    """One service table, its module links on a real socket, and one linked stand-in."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.directory = Path(tempfile.mkdtemp(prefix="extproc-f-"))
        self.table, self.clock = world.build()
        self.metrics = Metrics(lambda: self.table, self.clock.now)
        self.links = ModuleLinks(
            lambda: self.table,
            self.clock,
            version=lambda cluster: cluster.generation,
            on_change=lambda: self.links.publish(),
            metrics=self.metrics,
        )
        self.links.publish()
        self.loop.run_until_complete(self.links.start(self.directory / MODULE_SOCKET))
        self.peer = ModulePeer()
        self.peer.connect(self.directory / MODULE_SOCKET)
        self.settle()
        assert self.links.links == 1

    def settle(self) -> None:
        """Let the service read everything sent so far (the sweep drains the link)."""

        async def drain() -> None:
            await asyncio.sleep(0)
            self.links.sweep()

        self.loop.run_until_complete(drain())

    def close(self) -> None:
        self.peer.close()
        self.loop.run_until_complete(self.links.stop())
        self.loop.close()
        shutil.rmtree(self.directory, ignore_errors=True)


@contextlib.contextmanager
def _rig() -> Iterator[_Rig]:
    """A fresh rig per example: what a strategy draws depends on the entries written."""
    made = _Rig()
    try:
        yield made
    finally:
        made.close()


_FLAGS = st.sampled_from(
    [
        0,
        UPSTREAM_CONNECTION_FAILURE,
        UPSTREAM_REMOTE_RESET,
        UPSTREAM_PROTOCOL_ERROR,
        UPSTREAM_OVERFLOW,
        0x2,
        2**64 - 1,
    ]
) | st.integers(0, 2**64 - 1)
_ADDRESSES = st.sampled_from(world.ALL_HOSTS + world.FOREIGN_HOSTS + ("",))


@st.composite
def _structured(draw: st.DrawFn, rig: _Rig, *, exact: bool) -> bytes:
    """A record for one of the entries the service wrote; ``exact``: naming the entry,
    version and an attempt host as written (a host of the entry with its index and slot,
    or any address without), else each may be anything; the rest drawn."""
    name = draw(st.sampled_from(world.CLUSTER_NAMES))
    index, entry = rig.peer.find(name)
    version = entry.version
    if entry.hosts and draw(st.booleans()):
        host_index = draw(st.integers(0, len(entry.hosts) - 1))
        host_slot, address = entry.hosts[host_index].slot, entry.hosts[host_index].address
    else:
        host_index, host_slot, address = NO_HOST_INDEX, NO_HOST_SLOT, draw(_ADDRESSES)
    if not exact:
        index = draw(st.just(index) | st.integers(0, MAX_SERVICES - 1))
        version = draw(st.just(version) | st.integers(0, 2**64 - 1))
        host_index = draw(st.just(host_index) | st.integers(0, MAX_HOSTS))
        host_slot = draw(st.just(host_slot) | st.integers(0, HOST_SLOTS - 1))
        address = draw(st.just(address) | _ADDRESSES)
    return record(
        worker=draw(st.integers(0, MAX_WORKERS - 1)),
        entry=index,
        version=version,
        host_index=host_index,
        host_slot=host_slot,
        status=draw(st.sampled_from([0, 200, 404, 429, 502, 503, 504]) | st.integers(0, 2**32 - 1)),
        flags=draw(_FLAGS),
        successes_before=draw(st.integers(0, 10) | st.integers(0, 2**64 - 1)),
        address=address,
    )


def _flipped(data: bytes, position: int, bit: int) -> bytes:
    position %= len(data)
    return data[:position] + bytes([data[position] ^ (1 << bit)]) + data[position + 1 :]


def _messages(rig: _Rig) -> st.SearchStrategy[bytes]:
    structured = _structured(rig, exact=False)
    return st.one_of(
        _structured(rig, exact=True),
        _structured(rig, exact=True),
        structured,
        st.tuples(structured, st.integers(0, RECORD_SIZE - 1), st.integers(0, 7)).map(
            lambda t: _flipped(*t)
        ),
        st.binary(min_size=RECORD_SIZE, max_size=RECORD_SIZE),
        st.binary(min_size=1, max_size=300),
    )


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_whatever_a_module_sends_the_service_applies_or_drops_within_its_services(
    data: st.DataObject,
) -> None:
    with _rig() as rig:
        hosts_before = _hosts(rig.table, rig.clock.now())
        for _ in range(data.draw(st.integers(1, 3))):
            messages = data.draw(st.lists(_messages(rig), min_size=1, max_size=12))
            with structlog.testing.capture_logs() as logs:
                for message in messages:
                    rig.peer.send(message)
                rig.settle()
            assert not [entry for entry in logs if entry["event"] == "module.record_error"]
            assert rig.links.links == 1
            assert _hosts(rig.table, rig.clock.now()) == hosts_before
            _check_outcomes_and_entries(rig)
            rig.clock.advance(data.draw(st.floats(0, 2)))
        counted = any(
            any(rig.metrics.host_stats(name, host).values())
            for name, hosts in world.HOSTS.items()
            for host in hosts
        )
        event("some outcome counted" if counted else "nothing counted")


def _check_outcomes_and_entries(rig: _Rig) -> None:
    for name in world.CLUSTER_NAMES:
        for host in world.ALL_HOSTS + world.FOREIGN_HOSTS:
            if host not in world.HOSTS[name]:
                assert not any(rig.metrics.host_stats(name, host).values()), (name, host)
        _, entry = rig.peer.find(name)
        assert {host.address for host in entry.hosts} <= world.HOSTS[name]


def _hosts(table: ServiceTable, now: float) -> dict[str, frozenset[str]]:
    return {
        name: frozenset(view.address for view in cluster.hosts(now))
        for name, cluster in table.clusters.items()
    }
