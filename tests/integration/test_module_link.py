"""The module path's links on a real ``ServiceApp``, with a Python stand-in of the C shim.

The stand-in (``tests/module_peer.py``) does what the module does with the region and the
link: a sealed memfd, the hello with the memfd attached, seqlock reads of the entries,
success counters and outcome records. The service is the real one, on a private socket
directory, as ``extproc up --data-path module`` runs it.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import struct
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from extproc.core.outcome import UPSTREAM_CONNECTION_FAILURE
from extproc.core.policy import Locality, Workload
from extproc.errors import StartupError
from extproc.istio import load_policy_text
from extproc.module import build as build_module
from extproc.sandbox import DnsResponder
from extproc.server.app import ServiceApp
from extproc.server.module_link import MALFORMED_HELLO, MALFORMED_RECORD, UNKNOWN_ENTRY
from extproc.settings import HostPort, Settings
from extproc.wire import (
    GRPC_SOCKET,
    MODULE_SOCKET,
    REGION_SIZE,
    SYNC_SOCKET,
    DataPath,
    ModuleLb,
)
from tests.module_peer import ModulePeer, hello, record

from .test_reload import entry, rule

MYDB = "outbound|80||mydb.com"
OTHER = "outbound|80||other.com"
EAST = "127.0.0.11:80"
WEST = "127.0.0.12:80"
MYDB_YAML = entry("mydb.com", [("127.0.0.11", "us-east1"), ("127.0.0.12", "us-west")])
OTHER_YAML = entry("other.com", [("127.0.0.13", "us-east1")])


def _yaml(consecutive: int = 1) -> str:
    return (
        MYDB_YAML
        + "---\n"
        + rule("mydb.com").replace(
            "consecutive5xxErrors: 1", f"consecutive5xxErrors: {consecutive}"
        )
        + "---\n"
        + OTHER_YAML
    )


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    """A short private directory (a Unix socket path has 107 bytes at most)."""
    path = Path(tempfile.mkdtemp(prefix="extproc-m-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def _start(socket_dir: Path, text: str, **settings: object) -> ServiceApp:
    app = ServiceApp(
        load_policy_text(text, "mydb.yaml"),
        Settings(
            admin=HostPort("127.0.0.1", 0),
            socket_dir=socket_dir,
            data_path=DataPath.MODULE,
            shutdown_grace_s=0,
            workload=Workload(Locality.parse("us-east1")),
            **settings,  # type: ignore[arg-type]
        ),
    )
    await app.start()
    return app


@pytest.fixture
async def app(socket_dir: Path) -> AsyncIterator[ServiceApp]:
    service = await _start(socket_dir, _yaml())
    yield service
    await service.stop()


@pytest.fixture
def peers() -> Iterator[Callable[..., ModulePeer]]:
    made: list[ModulePeer] = []

    def make(**kwargs: object) -> ModulePeer:
        peer = ModulePeer(**kwargs)  # type: ignore[arg-type]
        made.append(peer)
        return peer

    yield make
    for peer in made:
        peer.close()


async def until(predicate: Callable[[], object], timeout_s: float = 5.0) -> None:
    """Let the service run until ``predicate()`` holds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("the condition did not hold in time")
        await asyncio.sleep(0.01)


def _linked(peer: ModulePeer, name: str = MYDB) -> bool:
    try:
        peer.find(name)
    except LookupError:
        return False
    return True


def _addresses(peer: ModulePeer, name: str = MYDB) -> list[str]:
    return [host.address for host in peer.find(name)[1].hosts]


async def test_a_linked_region_gets_every_table_with_its_version(
    app: ServiceApp, socket_dir: Path, peers: Callable[..., ModulePeer]
) -> None:
    peer = peers()
    peer.connect(socket_dir / MODULE_SOCKET)
    await until(lambda: _linked(peer) and _linked(peer, OTHER))
    _, mydb = peer.find(MYDB)
    cluster = app.table.clusters[MYDB]
    # The lua path's table: us-east1 takes everything while it is healthy.
    assert mydb.hosts == tuple(
        host for host in mydb.hosts if host.address == EAST and host.weight == 100_000
    )
    assert len(mydb.hosts) == 1
    assert mydb.version == app.sync_endpoint.version(cluster)
    assert mydb.lb is ModuleLb.LEAST_REQUEST  # Istio's default
    assert not mydb.withheld
    assert mydb.error_codes == frozenset(range(500, 600))
    assert app.module_links is not None
    assert app.module_links.links == 1


async def test_a_failure_record_ejects_and_every_region_is_steered_at_once(
    app: ServiceApp, socket_dir: Path, peers: Callable[..., ModulePeer]
) -> None:
    # Two Envoys at once, as during a hot restart: each has its own region.
    first, second = peers(pid=101), peers(pid=102)
    first.connect(socket_dir / MODULE_SOCKET)
    second.connect(socket_dir / MODULE_SOCKET)
    await until(lambda: _linked(first) and _linked(second))
    first.report(MYDB, EAST, status=503)
    await until(lambda: _addresses(first) == [WEST] and _addresses(second) == [WEST])
    assert app.metrics.host_stats(MYDB, EAST)["5xx"] == 1
    east = next(view for view in app.table.clusters[MYDB].hosts(app.now()) if view.address == EAST)
    assert east.ejected


async def test_successes_before_a_failure_in_one_worker_are_applied_first(
    socket_dir: Path, peers: Callable[..., ModulePeer]
) -> None:
    app = await _start(socket_dir, _yaml(consecutive=2))
    try:
        peer = peers()
        peer.connect(socket_dir / MODULE_SOCKET)
        await until(lambda: _linked(peer))
        slot = peer.find(MYDB)[1].hosts[0].slot
        peer.report(MYDB, EAST, status=503, worker=1)
        peer.succeed(1, slot)  # counted, not sent: only its value travels with the next record
        peer.report(MYDB, EAST, status=503, worker=1)
        await until(lambda: app.metrics.host_stats(MYDB, EAST)["5xx"] == 2)
        # 503, 200, 503: never two in a row, so no ejection with consecutive5xxErrors: 2.
        assert app.metrics.host_stats(MYDB, EAST)["success"] == 1
        assert _addresses(peer) == [EAST]
    finally:
        await app.stop()


async def test_success_counters_reach_the_core_within_a_sweep(
    app: ServiceApp, socket_dir: Path, peers: Callable[..., ModulePeer]
) -> None:
    peer = peers()
    peer.connect(socket_dir / MODULE_SOCKET)
    await until(lambda: _linked(peer))
    slot = peer.find(MYDB)[1].hosts[0].slot
    peer.succeed(0, slot, 5)
    peer.succeed(1, slot, 2)
    await until(lambda: app.metrics.host_stats(MYDB, EAST)["success"] == 7, timeout_s=1)
    # Counted once: later sweeps see no new successes.
    await asyncio.sleep(0.3)
    assert app.metrics.host_stats(MYDB, EAST)["success"] == 7


async def test_counts_made_before_the_link_are_not_applied(
    app: ServiceApp, socket_dir: Path, peers: Callable[..., ModulePeer]
) -> None:
    # A region that outlived a service restart: its counters are the new link's baseline.
    peer = peers()
    for worker in range(2):
        for slot in range(8):
            peer.succeed(worker, slot, 1000)
    peer.connect(socket_dir / MODULE_SOCKET)
    await until(lambda: _linked(peer))
    await asyncio.sleep(0.3)
    assert app.metrics.host_stats(MYDB, EAST)["success"] == 0


async def test_a_link_that_goes_away_is_forgotten(
    app: ServiceApp, socket_dir: Path, peers: Callable[..., ModulePeer]
) -> None:
    peer = peers()
    peer.connect(socket_dir / MODULE_SOCKET)
    await until(lambda: _linked(peer))
    assert app.module_links is not None
    assert app.module_links.links == 1
    peer.disconnect()
    await until(lambda: app.module_links is not None and app.module_links.links == 0)
    # Linked again (the module reconnects): every table again.
    peer.connect(socket_dir / MODULE_SOCKET)
    await until(lambda: app.module_links is not None and app.module_links.links == 1)


def _memfd(size: int, seals: int) -> int:
    fd = os.memfd_create("not-a-region", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, size)
    import fcntl

    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
    return fd


@pytest.mark.parametrize(
    "case",
    ["magic", "no-descriptor", "two-descriptors", "unsealed", "short-region", "foreign-header"],
)
async def test_a_malformed_hello_is_dropped_counted_and_the_link_closed(
    app: ServiceApp, socket_dir: Path, peers: Callable[..., ModulePeer], case: str
) -> None:
    import fcntl

    shrink = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL
    peer = peers(seals=0) if case == "unsealed" else peers()
    extra: list[int] = []
    message, fds = None, None
    if case == "magic":
        message = b"EXTPROCX" + hello(1, 2)[8:]
    elif case == "no-descriptor":
        fds = []
    elif case == "two-descriptors":
        extra.append(_memfd(REGION_SIZE, shrink))
        fds = [peer.memfd, extra[0]]
    elif case == "short-region":
        extra.append(_memfd(4096, shrink))
        fds = extra
    elif case == "foreign-header":
        peer.map[:8] = b"NOTOURS!"
    peer.connect(socket_dir / MODULE_SOCKET, message, fds)
    links = app.module_links
    assert links is not None
    await until(lambda: links.dropped[MALFORMED_HELLO] == 1)
    assert links.links == 0
    assert peer.sock is not None
    peer.sock.settimeout(5)
    assert peer.sock.recv(1) == b""  # closed by the service
    for fd in extra:
        os.close(fd)
    # Nothing was written into a region the service refused.
    assert not _linked(peer)


async def test_malformed_and_unknown_records_are_dropped_counted_and_never_applied(
    app: ServiceApp, socket_dir: Path, peers: Callable[..., ModulePeer]
) -> None:
    peer = peers()
    peer.connect(socket_dir / MODULE_SOCKET)
    await until(lambda: _linked(peer))
    index, mydb = peer.find(MYDB)
    slot = mydb.hosts[0].slot
    peer.send(b"\xff" * 128)
    peer.send(b"short")
    ours = {"entry": index, "version": mydb.version, "status": 503, "address": EAST}
    peer.send(record(**{**ours, "version": mydb.version + 1}, host_index=0, host_slot=slot))
    peer.send(record(**ours, host_index=0, host_slot=slot + 1))
    peer.send(record(**ours, host_index=5, host_slot=slot))
    peer.send(record(**{**ours, "address": WEST}, host_index=0, host_slot=slot))
    peer.send(record(**{**ours, "entry": index + 1}, host_index=0, host_slot=slot))
    peer.send(record(**{**ours, "address": ""}))  # outside the snapshot, and no address
    links = app.module_links
    assert links is not None
    await until(lambda: links.dropped[MALFORMED_RECORD] == 2 and links.dropped[UNKNOWN_ENTRY] == 6)
    assert app.metrics.host_stats(MYDB, EAST)["5xx"] == 0
    assert _addresses(peer) == [EAST]
    # The link survives bad records: a good one still counts.
    peer.report(MYDB, EAST, status=503)
    await until(lambda: app.metrics.host_stats(MYDB, EAST)["5xx"] == 1)


async def test_an_attempt_of_an_older_snapshot_still_counts(
    app: ServiceApp, socket_dir: Path, peers: Callable[..., ModulePeer]
) -> None:
    # An attempt routed before a table change ends after it: its version is known.
    peer = peers()
    peer.connect(socket_dir / MODULE_SOCKET)
    await until(lambda: _linked(peer))
    index, before = peer.find(MYDB)
    east = before.hosts[0]
    peer.report(MYDB, EAST, status=503)
    await until(lambda: _addresses(peer) == [WEST])
    old = {"entry": index, "version": before.version, "host_index": 0, "host_slot": east.slot}
    peer.send(record(**old, address=EAST, flags=UPSTREAM_CONNECTION_FAILURE))
    await until(lambda: app.metrics.host_stats(MYDB, EAST)["connect_failure"] == 1)
    assert app.metrics.host_stats(MYDB, EAST)["5xx"] == 1


async def test_an_attempt_on_a_host_outside_the_snapshot_counts_on_that_host(
    app: ServiceApp, socket_dir: Path, peers: Callable[..., ModulePeer]
) -> None:
    # A retry Envoy's load balancer sent to the failover host, which the entry does not
    # list while the local one is healthy: the module names it by its address only.
    peer = peers()
    peer.connect(socket_dir / MODULE_SOCKET)
    await until(lambda: _linked(peer))
    assert _addresses(peer) == [EAST]
    peer.report(MYDB, EAST, status=0, flags=UPSTREAM_CONNECTION_FAILURE)
    peer.report(MYDB, WEST, status=200)
    await until(lambda: app.metrics.host_stats(MYDB, WEST)["success"] == 1)
    assert app.metrics.host_stats(MYDB, EAST)["connect_failure"] == 1


async def test_a_removed_service_leaves_the_regions(
    app: ServiceApp, socket_dir: Path, peers: Callable[..., ModulePeer]
) -> None:
    peer = peers()
    peer.connect(socket_dir / MODULE_SOCKET)
    await until(lambda: _linked(peer, OTHER))
    await app.apply_policy(load_policy_text(MYDB_YAML, "mydb.yaml"))
    assert not _linked(peer, OTHER)
    assert _linked(peer)


async def test_a_service_without_dns_answers_is_written_withheld(
    socket_dir: Path, peers: Callable[..., ModulePeer]
) -> None:
    text = entry("named.com", [("named.example", "us-east1")], resolution="DNS")
    async with DnsResponder({}, ttl_s=1) as dns:
        dns.servfail = True
        app = await _start(socket_dir, text, dns_resolver=dns.address)
        try:
            peer = peers()
            peer.connect(socket_dir / MODULE_SOCKET)
            await until(lambda: _linked(peer, "outbound|80||named.com"))
            named = peer.find("outbound|80||named.com")[1]
            assert named.withheld
            assert named.hosts == ()
        finally:
            await app.stop()


async def test_the_module_metrics_are_exposed(
    app: ServiceApp, socket_dir: Path, peers: Callable[..., ModulePeer]
) -> None:
    peer = peers()
    peer.connect(socket_dir / MODULE_SOCKET)
    await until(lambda: _linked(peer))
    struct.pack_into("<Q", peer.map, 40, 3)  # the module's own count of unsent records
    text = app.metrics.exposition().decode()
    assert "extproc_module_links 1.0" in text
    assert 'extproc_module_records_dropped_total{reason="malformed_record"} 0.0' in text
    assert "extproc_module_records_unsent_total 3.0" in text
    peer.disconnect()
    links = app.module_links
    assert links is not None
    await until(lambda: links.links == 0)
    # A link that went away keeps its counts in the totals.
    assert "extproc_module_records_unsent_total 3.0" in app.metrics.exposition().decode()


async def test_the_module_path_needs_a_socket_directory() -> None:
    app = ServiceApp(
        load_policy_text(MYDB_YAML, "mydb.yaml"),
        Settings(admin=HostPort("127.0.0.1", 0), data_path=DataPath.MODULE),
    )
    with pytest.raises(StartupError, match="socket directory"):
        await app.start()
    await app.stop()


async def test_the_other_data_paths_open_no_module_socket(socket_dir: Path) -> None:
    app = ServiceApp(
        load_policy_text(MYDB_YAML, "mydb.yaml"),
        Settings(admin=HostPort("127.0.0.1", 0), socket_dir=socket_dir, shutdown_grace_s=0),
    )
    await app.start()
    try:
        assert app.module_links is None
        assert not (socket_dir / MODULE_SOCKET).exists()
    finally:
        await app.stop()


async def test_the_module_path_off_x86_64_is_refused_before_anything_listens(
    socket_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(build_module.platform, "machine", lambda: "aarch64")
    with pytest.raises(StartupError, match="needs an x86-64 machine"):
        await _start(socket_dir, MYDB_YAML)
    for name in (MODULE_SOCKET, SYNC_SOCKET, GRPC_SOCKET):
        assert not (socket_dir / name).exists()
