"""The module path's links: Envoy's C shim hands the service its region; tables in, outcomes out.

Each Envoy process that loads the shim (``wire.MODULE_NAME``) connects to the service's
``SOCK_SEQPACKET`` socket ``socket_dir/MODULE_SOCKET`` (a directory only Envoy and the
service can open) and sends a hello with its region, a sealed memfd, attached. A hot
restart links two Envoys at once, each with its own region; every region gets every table.
Per link (``ModuleLinks``, one asyncio reader per socket, no threads):

1. Hello: magic, layout and size checked (``module_region.parse_hello``), the memfd must be
   exactly ``REGION_SIZE`` and sealed against shrinking (a shrunk mapping would kill the
   service with SIGBUS), its header ours (``parse_header``). Then it is mapped, every
   entry is written (the current tables; unused entries cleared), and the success
   counters' current values become the link's baseline. Anything else is dropped, counted
   and the connection closed; the module tries again 100 ms later.
2. Tables: ``publish`` (called wherever the other paths publish: ``ServiceApp.publish``)
   writes the entries ``ModuleTables`` says changed into every region, under the seqlock.
3. Records: one per upstream attempt the module did not count as a plain success (a
   failure, a status the detector counts, a client that went away), every attempt of a
   retried request on its own host, the middle one of three included: the module is also
   the router's upstream access log, which Envoy calls as each attempt ends. The host's
   successes up to the record's ``successes_before`` are applied first (the worker's
   order), then the attempt's results (``module_region.attempt_results``: the ext_proc
   path's rules, for one attempt), checked against the snapshot the record names
   (``ModuleTables.snapshot``). A record naming an entry version or host the service did
   not write is dropped and counted, never applied.
4. Every ``COUNTER_SWEEP_S`` the pending records are read, then every worker's success
   counters, and the deltas applied.

A link that goes away (Envoy exited, a drained hot-restart parent) is forgotten: its
mapping and memfd are closed. Across workers the order is approximate as on the lua path:
a worker's successes reach the core within one sweep, its failures at once.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import fcntl
import mmap
import os
import socket
from collections.abc import Callable, Iterable
from pathlib import Path

import structlog
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from extproc.clock import Clock
from extproc.core.cluster import ClusterState
from extproc.core.outcome import UPSTREAM_OVERFLOW
from extproc.core.outlier import AttemptResult
from extproc.core.table import ServiceTable
from extproc.server.metrics import Metrics
from extproc.server.module_region import (
    Header,
    Hello,
    Record,
    attempt_results,
    counter_index,
    decode_record,
    parse_header,
    parse_hello,
    write_entry,
)
from extproc.server.module_tables import ModuleTables, Snapshot
from extproc.wire import (
    COUNTER_SWEEP_S,
    COUNTERS_OFFSET,
    HEADER_SIZE,
    HELLO_SIZE,
    HOST_SLOTS,
    MAX_WORKERS,
    NO_HOST_INDEX,
    RECORD_SIZE,
    REGION_SIZE,
)

log = structlog.get_logger(__name__)

#: Why the service refused a message: the ``reason`` of ``extproc_module_records_dropped``.
MALFORMED_HELLO = "malformed_hello"
MALFORMED_RECORD = "malformed_record"
UNKNOWN_ENTRY = "unknown_entry"
DROP_REASONS = (MALFORMED_HELLO, MALFORMED_RECORD, UNKNOWN_ENTRY)
#: The largest message we take: one more byte than either kind, so a longer one shows.
_RECV_SIZE = max(HELLO_SIZE, RECORD_SIZE) + 1
_FD_SPACE = socket.CMSG_SPACE(4 * 4)
_READ_BATCH = 1024
_SUCCESS = AttemptResult.success()


class _Link:
    """One connected Envoy process: its socket and, after the hello, its mapped region."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.hello: Hello | None = None
        self.map: mmap.mmap | None = None
        self.region: memoryview | None = None
        self.words: memoryview | None = None  # the region as u64s (the counters)
        self.seen = array.array("Q")  # the counters as last applied: MAX_WORKERS x HOST_SLOTS

    def header(self) -> Header | None:
        return None if self.region is None else parse_header(bytes(self.region[:HEADER_SIZE]))

    def close(self) -> None:
        """Close the socket and the mapping (its views first: mmap refuses otherwise)."""
        for view in (self.words, self.region):
            if view is not None:
                view.release()
        self.words = self.region = None
        if self.map is not None:
            self.map.close()
            self.map = None
        self.sock.close()


class ModuleLinks:
    """The service's end of every module link: tables into the regions, outcomes to the core."""

    def __init__(
        self,
        table: Callable[[], ServiceTable],
        clock: Clock,
        *,
        version: Callable[[ClusterState], int],
        withheld: Callable[[ClusterState], bool] = lambda _cluster: False,
        on_change: Callable[[], None] = lambda: None,
        metrics: Metrics | None = None,
    ) -> None:
        """Serve the current tables to every linked Envoy and record what it reports.

        Args:
            table: returns the current table (a reload swaps it).
            clock: the service's clock.
            version: a cluster's table version (``SyncEndpoint.version``: it only goes up).
            withheld: whether a cluster's hosts are not known yet (no override for it).
            on_change: called when an outcome changed a cluster's health (EDS and the
                regions learn it at once).
            metrics: where attempt outcomes are counted.
        """
        self._table = table
        self._now = clock.now
        self._on_change = on_change
        self._metrics = metrics
        self._links: list[_Link] = []
        self._listener: socket.socket | None = None
        self._path: Path | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self.tables = ModuleTables(version, withheld)
        self._last_refusal = ""
        self.dropped = dict.fromkeys(DROP_REASONS, 0)
        self._gone = (0, 0, 0)  # the module counters of links that went away

    @property
    def links(self) -> int:
        """Linked Envoy processes (a hot restart links two)."""
        return sum(1 for link in self._links if link.region is not None)

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self, path: Path) -> None:
        """Listen on ``path`` and start the counter sweeps; raises OSError when it cannot."""
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            listener.bind(str(path))
            listener.listen(16)
            listener.setblocking(False)
        except OSError:
            listener.close()
            raise
        self._listener, self._path = listener, path
        asyncio.get_running_loop().add_reader(listener.fileno(), self._accept)
        self._sweeper = asyncio.create_task(self._sweep_loop())
        log.info("module.listening", socket=str(path))

    async def stop(self) -> None:
        """Stop listening, forget every link; idempotent."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        loop = asyncio.get_running_loop()
        for link in list(self._links):
            self._forget(link, loop)
        if self._listener is not None:
            loop.remove_reader(self._listener.fileno())
            self._listener.close()
            self._listener = None
            if self._path is not None:
                with contextlib.suppress(OSError):
                    self._path.unlink()

    def _accept(self) -> None:
        assert self._listener is not None
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("module.accept_failed", error=str(exc))
                return
            sock.setblocking(False)
            link = _Link(sock)
            self._links.append(link)
            loop.add_reader(sock.fileno(), self._readable, link)

    def _forget(self, link: _Link, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Close a link that went away (or that sent a bad hello); keep its counters."""
        if link not in self._links:
            return
        self._links.remove(link)
        header = link.header()
        if header is not None:
            dropped, bad, refused = self._gone
            self._gone = (
                dropped + header.dropped,
                bad + header.bad_snapshots,
                refused + header.overrides_refused,
            )
        (loop or asyncio.get_running_loop()).remove_reader(link.sock.fileno())
        if link.hello is not None:
            log.info("module.link_down", pid=link.hello.pid)
        link.close()

    # --- messages ------------------------------------------------------------------------

    def _readable(self, link: _Link) -> None:
        """Read the link's messages; a bad hello or a closed peer ends the link.

        At most ``_READ_BATCH`` per call, so a flooding peer cannot hold the event loop (the
        reader is called again while messages wait).
        """
        for _ in range(_READ_BATCH):
            if link not in self._links:
                return
            try:
                data, ancillary, flags, _ = link.sock.recvmsg(
                    _RECV_SIZE, _FD_SPACE, socket.MSG_CMSG_CLOEXEC
                )
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.info("module.link_error", error=str(exc))
                self._forget(link)
                return
            fds = _received_fds(ancillary)
            if not data and not fds:
                self._forget(link)  # the module closed the link
                return
            if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
                data = b""  # longer than any of ours, or more descriptors than one
            if link.hello is None:
                self._greet(link, data, fds)
                continue
            for fd in fds:
                os.close(fd)
            record = decode_record(data) if not fds else None
            if record is None:
                self.dropped[MALFORMED_RECORD] += 1
                continue
            try:
                self._apply(link, record)
            except Exception:
                # One bad record is dropped; the link and the service go on.
                log.exception("module.record_error", entry=record.entry, version=record.version)

    def _greet(self, link: _Link, data: bytes, fds: list[int]) -> None:
        """Take a link's hello and map its region, or refuse it (counted, connection closed)."""
        hello = parse_hello(data)
        if hello is None or len(fds) != 1:
            for fd in fds:
                os.close(fd)
            self._refuse(link, "not a hello of this layout with one descriptor")
            return
        try:
            reason = _region_problem(fds[0])
            if reason is None:
                # mmap keeps a descriptor of its own; ours is closed below either way.
                link.map = mmap.mmap(fds[0], REGION_SIZE, mmap.MAP_SHARED)
                link.region = memoryview(link.map)
        except OSError as exc:
            reason = f"cannot map the region: {exc.strerror or exc}"
        finally:
            os.close(fds[0])
        if reason is None and link.header() is None:
            reason = "the region's header is not of this layout"
        if reason is not None or link.region is None:
            self._refuse(link, reason or "no region")
            return
        link.hello = hello
        link.words = link.region.cast("Q")
        link.seen.frombytes(link.region[COUNTERS_OFFSET:])
        for index, body in self.tables.bodies():
            write_entry(link.region, index, body)
        self._last_refusal = ""
        log.info("module.link_up", pid=hello.pid, concurrency=hello.concurrency)

    def _refuse(self, link: _Link, reason: str) -> None:
        """Drop a bad hello: count it, close the link, and log it unless it repeats."""
        self.dropped[MALFORMED_HELLO] += 1
        if reason != self._last_refusal:
            log.warning("module.link_refused", reason=reason)
            self._last_refusal = reason
        self._forget(link)

    # --- tables --------------------------------------------------------------------------

    def publish(self) -> None:
        """Write every service whose table changed into every region (``ModuleTables``)."""
        for index, body in self.tables.update(self._table(), self._now()):
            for link in self._links:
                if link.region is not None:
                    write_entry(link.region, index, body)

    # --- outcomes ------------------------------------------------------------------------

    def _apply(self, link: _Link, record: Record) -> None:
        """Record one attempt: its host's earlier successes first, then the attempt's results.

        The host is the attempt's ``upstream.address``. When the module found it in the
        snapshot the record names, its index and slot must say the same host there (else the
        record is dropped, never applied); a host outside the snapshot (a retry Envoy's load
        balancer sent elsewhere) is recorded by its address, as on the other paths.
        """
        snapshot = self.tables.snapshot(record.entry, record.version)
        cluster = None if snapshot is None else self._table().clusters.get(snapshot.cluster_name)
        if snapshot is not None and cluster is not None and record.flags & UPSTREAM_OVERFLOW:
            # Refused by the cluster's pool, maybe before any host had an address: the
            # cluster is all there is to count (it is never an endpoint's result).
            if self._metrics is not None:
                self._metrics.count_overflow(cluster.service.cluster_name)
            if not record.address:
                return
        if snapshot is None or cluster is None or not _names_its_host(record, snapshot):
            self.dropped[UNKNOWN_ENTRY] += 1
            return
        now = self._now()
        generation = cluster.generation
        if self.tables.slots.host(record.host_slot) == (snapshot.cluster_name, record.address):
            delta = self._take(link, record.worker, record.host_slot, record.successes_before)
            self._successes(cluster, record.address, delta, now)
        name = cluster.service.cluster_name
        known = cluster.has_host(record.address)
        for result in attempt_results(record):
            # The module keeps its own active-request counts; the core's are not touched.
            cluster.record(record.address, result, now, finished=False)
            if self._metrics is not None and known:
                self._metrics.count_result(name, record.address, result)
        if cluster.generation != generation:
            self._on_change()

    @staticmethod
    def _take(link: _Link, worker: int, slot: int, value: int) -> int:
        """How many of a worker's successes on one slot, up to counter ``value``, are new."""
        i = worker * HOST_SLOTS + slot
        delta = value - link.seen[i]
        if delta <= 0:
            return 0  # a sweep already applied them
        link.seen[i] = value
        return delta

    def _successes(self, cluster: ClusterState, address: str, delta: int, now: float) -> None:
        """Apply ``delta`` new successes of one host (none for a host that left the cluster)."""
        if delta <= 0 or not cluster.has_host(address):
            return  # a host that left: its slot waits, its successes count for nobody
        cluster.record(address, _SUCCESS, now, finished=False)
        if self._metrics is not None:
            self._metrics.count_result(cluster.service.cluster_name, address, _SUCCESS, delta)

    def sweep(self) -> None:
        """Read every link's pending records, then its success counters; apply the deltas."""
        for link in list(self._links):
            self._readable(link)
        now = self._now()
        clusters = self._table().clusters
        generations = {name: cluster.generation for name, cluster in clusters.items()}
        # Each slot's owner, resolved once for every link and worker.
        owners = [(slot, clusters.get(name), address) for slot, name, address in self.tables.slots]
        for link in self._links:
            if link.words is None or link.hello is None:
                continue
            for worker in range(min(link.hello.concurrency or MAX_WORKERS, MAX_WORKERS)):
                for slot, cluster, address in owners:
                    value = link.words[counter_index(worker, slot)]
                    seen = worker * HOST_SLOTS + slot
                    if value < link.seen[seen]:
                        link.seen[seen] = value  # not ours to undo
                        continue
                    delta = self._take(link, worker, slot, value)
                    if cluster is not None:
                        self._successes(cluster, address, delta, now)
        if any(cluster.generation != generations[name] for name, cluster in clusters.items()):
            self._on_change()

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(COUNTER_SWEEP_S)
            try:
                self.sweep()
            except Exception:
                # A bad region never stops the sweeps of the others.
                log.exception("module.sweep_failed")

    # --- metrics -------------------------------------------------------------------------

    def describe(self) -> Iterable[Metric]:
        return ()

    def collect(self) -> Iterable[Metric]:
        """The module path's metrics (prometheus_client's Collector), read at scrape time."""
        links = GaugeMetricFamily(
            "extproc_module_links",
            "Envoy processes whose module is linked to the service (two during a hot restart).",
        )
        links.add_metric([], self.links)
        yield links
        dropped = CounterMetricFamily(
            "extproc_module_records_dropped",
            "Hellos and records from the module the service refused, never applied.",
            labels=["reason"],
        )
        for reason, count in self.dropped.items():
            dropped.add_metric([reason], count)
        yield dropped
        totals = list(self._gone)
        for link in self._links:
            header = link.header()
            if header is not None:
                totals[0] += header.dropped
                totals[1] += header.bad_snapshots
                totals[2] += header.overrides_refused
        for (name, text), total in zip(_MODULE_COUNTERS, totals, strict=True):
            family = CounterMetricFamily(name, text)
            family.add_metric([], total)
            yield family


#: The module's own counters (its region's header), summed over every link there was.
_MODULE_COUNTERS = (
    (
        "extproc_module_records_unsent",
        "Outcome records the module could not send (no link, or the socket was full).",
    ),
    (
        "extproc_module_bad_snapshots",
        "Entries the module refused to route on (it kept its last good copy).",
    ),
    (
        "extproc_module_overrides_refused",
        "Hosts Envoy refused as the override (set_upstream_override_host said false).",
    ),
)


def _names_its_host(record: Record, snapshot: Snapshot) -> bool:
    """Whether the record's host is what its snapshot says (or, outside it, has an address)."""
    if record.host_index == NO_HOST_INDEX:
        return bool(record.address)
    if record.host_index >= len(snapshot.hosts):
        return False
    host = snapshot.hosts[record.host_index]
    return (host.slot, host.address) == (record.host_slot, record.address)


def _received_fds(ancillary: list[tuple[int, int, bytes]]) -> list[int]:
    """The descriptors an SCM_RIGHTS message carried (every one is ours to close)."""
    fds = array.array("i")
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    return list(fds)


def _region_problem(memfd: int) -> str | None:
    """Why a region cannot be mapped safely, or None: exactly our size, sealed against shrinking."""
    try:
        size = os.fstat(memfd).st_size
        seals = fcntl.fcntl(memfd, fcntl.F_GET_SEALS)
    except OSError as exc:
        return f"not a sealed memfd: {exc.strerror or exc}"
    if size != REGION_SIZE:
        return f"a region of {size} bytes, not {REGION_SIZE}"
    if not seals & fcntl.F_SEAL_SHRINK:
        return "the region is not sealed against shrinking"
    return None
