"""Real parts for the module's tests: the module built with the system C compiler, Envoy from
the wheel loading it, loopback stand-in upstreams, and a stand-in for the service's end of
the link.

The stand-in (``ServiceEnd``) does what the service does with a link, from the contract in
``extproc/wire.py`` ("module path") alone: it listens on a ``SOCK_SEQPACKET`` socket,
receives the hello with the memfd, maps the region, writes entries under the seqlock and
reads the records. The C side is checked against the contract, not against the service's
own writer.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import mmap
import os
import socket
import struct
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from extproc import wire
from extproc.demo import free_port
from extproc.module.build import build
from extproc.render.attempt_log import attempt_log
from extproc.render.filters import module_filter_at, router_filter
from extproc.render.typed import to_data
from extproc.sandbox import StandIn
from extproc.server.envoy_process import find_envoy_binary
from extproc.wire import ModuleLb

#: The service's EDS cluster name, as the renderer names it.
CLUSTER = "outbound|80||mydb.com"
#: The statuses Envoy's outlier detector counts (5xx): the entries' error_codes.
FIVE_XX = range(500, 600)
ABI_MATCHED = "Dynamic module ABI version v0.2.0 matched."


@pytest.fixture(scope="session")
def module_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The module, built once per test session into a cache of its own."""
    return build(cache_dir=tmp_path_factory.mktemp("module-cache"))


# --- The service's end of the link -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Host:
    addr: str
    weight: int
    slot: int


@dataclass(frozen=True, slots=True)
class Record:
    """One attempt's record, field by field as ``wire.RECORD_FORMAT`` lays it out."""

    worker: int
    slot: int
    version: int
    host: int  # the attempt's host in the snapshot; wire.NO_HOST_INDEX: not one of it
    host_slot: int
    kind: int
    code: int
    flags: int
    successes_before: int
    addr: str
    reserved: bytes  # offsets 20, 28 and 104..127, all zero


def error_bitmap(codes: Iterable[int]) -> bytes:
    bits = bytearray(wire.ERROR_CODES_BITS // 8)
    for code in codes:
        bits[code // 8] |= 1 << (code % 8)
    return bytes(bits)


def entry_bytes(
    name: str,
    hosts: Sequence[Host],
    *,
    seq: int,
    version: int,
    lb: ModuleLb = ModuleLb.ROUND_ROBIN,
    flags: int = 0,
    error_codes: Iterable[int] = FIVE_XX,
    choice_count: int = 2,
) -> bytes:
    """One entry, packed as ``wire`` lays it out."""
    head = struct.pack(
        wire.ENTRY_HEAD_FORMAT,
        seq,
        version,
        len(name),
        lb,
        flags,
        len(hosts),
        error_bitmap(error_codes),
        choice_count,
        b"",
        name.encode(),
    )
    body = b"".join(
        struct.pack(wire.HOST_FORMAT, h.weight, h.slot, len(h.addr), h.addr.encode()) for h in hosts
    )
    return (head + body).ljust(wire.ENTRY_SIZE, b"\0")


class Link:
    """One connected module: its hello, its region (mapped), the records it sends."""

    def __init__(self, conn: socket.socket, hello: bytes, memfd: int) -> None:
        self.conn = conn
        magic, self.layout, self.region_size, self.pid, self.concurrency = struct.unpack_from(
            wire.HELLO_FORMAT, hello
        )
        self.hello_ok = magic == wire.HELLO_MAGIC and len(hello) == wire.HELLO_SIZE
        self.memfd_size = os.fstat(memfd).st_size
        self.region = mmap.mmap(memfd, self.memfd_size, mmap.MAP_SHARED)
        self.memfd = memfd
        self.records: list[Record] = []
        self.raw_records: list[bytes] = []
        self._changed = threading.Condition()
        self._versions: dict[int, int] = {}
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                data = self.conn.recv(4096)
            except OSError:
                return
            if not data:
                return
            fields = struct.unpack(wire.RECORD_FORMAT, data.ljust(wire.RECORD_SIZE, b"\0")[:128])
            addr = fields[13][: fields[12]].decode("latin-1")
            reserved = struct.pack("<HI", fields[6], fields[9]) + fields[14]
            record = Record(*fields[1:6], fields[7], fields[8], *fields[10:12], addr, reserved)
            with self._changed:
                self.raw_records.append(data)
                if fields[0] == wire.RECORD_MAGIC:
                    self.records.append(record)
                self._changed.notify_all()

    def wait_records(self, count: int, timeout_s: float = 10.0) -> list[Record]:
        """The records so far, once there are at least ``count`` (or the timeout passed)."""
        with self._changed:
            self._changed.wait_for(lambda: len(self.records) >= count, timeout_s)
            return list(self.records)

    def header(self) -> tuple[Any, ...]:
        return struct.unpack_from(wire.HEADER_FORMAT, self.region, 0)

    def counter(self, offset: int) -> int:
        return int(struct.unpack_from("<Q", self.region, offset)[0])

    def successes(self, worker: int, host_slot: int) -> int:
        offset = wire.COUNTERS_OFFSET + (worker * wire.HOST_SLOTS + host_slot) * 8
        return int(struct.unpack_from("<Q", self.region, offset)[0])

    def entry_offset(self, slot: int) -> int:
        return wire.ENTRIES_OFFSET + slot * wire.ENTRY_SIZE

    def seq(self, slot: int) -> int:
        return int(struct.unpack_from("<Q", self.region, self.entry_offset(slot))[0])

    def write_entry(self, slot: int, name: str, hosts: Sequence[Host], **fields: Any) -> None:
        """Write an entry as the service does, under the seqlock."""
        version = self._versions.get(slot, 0) + 1
        self._versions[slot] = version
        self.write_raw(slot, entry_bytes(name, hosts, seq=0, version=version, **fields))

    def write_raw(self, slot: int, data: bytes) -> None:
        """Write an entry's bytes after seq: seq+1 (odd), the bytes, seq+1 (even)."""
        offset = self.entry_offset(slot)
        seq = self.seq(slot)
        odd = seq + 1 if seq % 2 == 0 else seq + 2
        struct.pack_into("<Q", self.region, offset, odd)
        self.region[offset + 8 : offset + wire.ENTRY_SIZE] = data[8 : wire.ENTRY_SIZE]
        struct.pack_into("<Q", self.region, offset, odd + 1)

    def hang_up(self) -> None:
        """Close the connection as a service that went away; the mapping stays."""
        with contextlib.suppress(OSError):
            self.conn.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.conn.close()

    def close(self) -> None:
        self.hang_up()
        with contextlib.suppress(BufferError, ValueError):
            self.region.close()
        with contextlib.suppress(OSError):
            os.close(self.memfd)


class ServiceEnd:
    """The service's ``SOCK_SEQPACKET`` listener: accepts links and keeps them."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.links: list[Link] = []
        self._lock = threading.Condition()
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._listener.bind(str(path))
        self._listener.listen(8)
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
                self._lock.notify_all()
            hello, fds, _, _ = socket.recv_fds(conn, 1024, 1)
            if not fds:
                conn.close()
                continue
            link = Link(conn, hello, fds[0])
            with self._lock:
                self.links.append(link)
                self._lock.notify_all()

    def wait_link(self, count: int = 1, timeout_s: float = 10.0) -> Link:
        """The ``count``-th link (1-based), once the module has made it."""
        with self._lock:
            if not self._lock.wait_for(lambda: len(self.links) >= count, timeout_s):
                raise AssertionError(f"no link {count} from the module within {timeout_s}s")
            return self.links[count - 1]

    def hang_up(self) -> None:
        """Stop listening and close every link, as a service that died; mappings stay."""
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        for link in self.links:
            link.hang_up()

    def close(self) -> None:
        self.hang_up()
        for link in self.links:
            link.close()


@pytest.fixture
def service_end(tmp_path: Path) -> Iterator[ServiceEnd]:
    end = ServiceEnd(tmp_path / wire.MODULE_SOCKET)
    yield end
    end.close()


# --- Envoy ---------------------------------------------------------------------------------------


#: What a retry may retry on: Istio's default policy (the renderer's), and one that also
#: retries a reset after connecting (so one request's attempts can end three ways).
ISTIO_RETRY_ON = "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
RETRY_ON_RESETS = "5xx,connect-failure,reset"


def bootstrap(
    listen_port: int,
    socket_path: Path | str,
    endpoints: Sequence[tuple[str, int]],
    *,
    retries: int = 0,
    retry_on: str = "5xx,connect-failure",
    priorities: bool = False,
    upstream_log: bool = True,
) -> dict[str, Any]:
    """A minimal bootstrap: one listener through the module to one STATIC cluster.

    ``priorities`` puts each endpoint in a priority of its own (0, 1, ...) and has a retry
    leave the priorities tried (``previous_priorities``), so attempt n goes to endpoint n.
    ``upstream_log`` is the router's attempt log into the module (the renderer's).
    """
    route: dict[str, Any] = {"cluster": CLUSTER}
    if retries:
        route["retry_policy"] = {
            "retry_on": retry_on,
            "num_retries": retries,
            "retry_host_predicate": [
                {
                    "name": "envoy.retry_host_predicates.previous_hosts",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts"
                        ".v3.PreviousHostsPredicate"
                    },
                }
            ],
            "host_selection_retry_max_attempts": 5,
        }
        if priorities:
            route["retry_policy"]["retry_priority"] = {
                "name": "envoy.retry_priorities.previous_priorities",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.retry.priority"
                    ".previous_priorities.v3.PreviousPrioritiesConfig",
                    "update_frequency": 1,
                },
            }
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager"
        ".v3.HttpConnectionManager",
        "stat_prefix": "ingress",
        "route_config": {
            "virtual_hosts": [
                {
                    "name": "all",
                    "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "route": route}],
                }
            ]
        },
        # The renderer's filter and attempt log, so these tests load what ships.
        "http_filters": [
            to_data(module_filter_at(socket_path)),
            to_data(router_filter([attempt_log()] if upstream_log else [])),
        ],
    }
    lb_endpoints = [
        {"endpoint": {"address": {"socket_address": {"address": ip, "port_value": port}}}}
        for ip, port in endpoints
    ]
    groups = (
        [{"priority": i, "lb_endpoints": [e]} for i, e in enumerate(lb_endpoints)]
        if priorities
        else [{"lb_endpoints": lb_endpoints}]
    )
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "ingress",
                    "address": {
                        "socket_address": {"address": "127.0.0.1", "port_value": listen_port}
                    },
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": hcm,
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": [
                {
                    "name": CLUSTER,
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "load_assignment": {
                        "cluster_name": CLUSTER,
                        "endpoints": groups,
                    },
                }
            ],
        },
    }


class Envoy:
    """Envoy from the wheel with the module on its search path; its log goes to a file."""

    def __init__(self, config: dict[str, Any], directory: Path, module: Path) -> None:
        self.directory = directory
        self.config_path = directory / "envoy.json"
        self.config_path.write_text(json.dumps(config))
        self.log_path = directory / "envoy.log"
        self.module = module
        self.proc: asyncio.subprocess.Process | None = None
        self.admin: tuple[str, int] | None = None

    def env(self) -> dict[str, str]:
        return {**os.environ, wire.MODULE_SEARCH_PATH_VAR: str(self.module)}

    async def validate(self) -> tuple[int, str]:
        """``envoy --mode validate`` on the config: its exit code and output."""
        proc = await asyncio.create_subprocess_exec(
            str(find_envoy_binary()),
            "--mode",
            "validate",
            "-c",
            str(self.config_path),
            "--log-level",
            "info",
            env=self.env(),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await proc.communicate()
        return proc.returncode or 0, out.decode(errors="replace")

    async def start(self, concurrency: int = 2, timeout_s: float = 30.0) -> None:
        address_file = self.directory / "admin-address"
        with self.log_path.open("wb") as log:
            self.proc = await asyncio.create_subprocess_exec(
                str(find_envoy_binary()),
                "-c",
                str(self.config_path),
                "--concurrency",
                str(concurrency),
                "--disable-hot-restart",
                "--log-level",
                "info",
                "--admin-address-path",
                str(address_file),
                env=self.env(),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.returncode is not None:
                raise AssertionError(f"envoy exited at start:\n{self.log()}")
            text = address_file.read_text().strip() if address_file.exists() else ""
            if text:
                host, _, port = text.rpartition(":")
                self.admin = (host, int(port))
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"envoy did not start:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


# --- Clients -------------------------------------------------------------------------------------


class KeepAlive:
    """One keep-alive HTTP/1.1 connection: every request on it lands on the same worker."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.conn = http.client.HTTPConnection(*address, timeout=10)

    def get(self, host: str = "mydb.com") -> tuple[int, str]:
        """One request: the status and the stand-in that served it ("" for Envoy's replies)."""
        self.conn.request("GET", "/", headers={"Host": host})
        reply = self.conn.getresponse()
        reply.read()
        return reply.status, reply.getheader("x-served-by") or ""

    def close(self) -> None:
        self.conn.close()


async def one_connection(address: tuple[str, int], count: int) -> list[tuple[int, str]]:
    """``count`` sequential requests on one keep-alive connection (off the event loop)."""

    def run() -> list[tuple[int, str]]:
        client = KeepAlive(address)
        try:
            return [client.get() for _ in range(count)]
        finally:
            client.close()

    return await asyncio.to_thread(run)


async def wait_until(condition: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        await asyncio.sleep(0.02)
    return condition()


# --- One Envoy with the module, two or three upstreams and the service's end ---------------------


@dataclass
class Rig:
    envoy: Envoy
    link: Link
    upstreams: list[StandIn]
    listen: tuple[str, int]

    def host(self, index: int, weight: int = 1) -> Host:
        """Upstream ``index`` as an entry's host; its host_slot is 100 + index."""
        ip, port = self.upstreams[index].address
        return Host(f"{ip}:{port}", weight, 100 + index)

    def name(self, index: int) -> str:
        return self.upstreams[index].name


RigFactory = Callable[..., Awaitable[Rig]]


@pytest.fixture
async def start_rig(
    tmp_path: Path, module_dir: Path, service_end: ServiceEnd
) -> AsyncIterator[RigFactory]:
    """Start ``upstreams`` stand-ins (127.0.0.21, .22, ...), Envoy with the module in front of
    them, and wait for the module's link."""
    servers: list[StandIn] = []
    envoys: list[Envoy] = []

    async def start(upstreams: int = 2, concurrency: int = 2, **config_args: Any) -> Rig:
        for i in range(upstreams):
            server = StandIn(f"up{i}", f"127.0.0.{21 + i}", 0)
            await server.start()
            servers.append(server)
        listen = ("127.0.0.1", free_port())
        config = bootstrap(listen[1], service_end.path, [s.address for s in servers], **config_args)
        envoy = Envoy(config, tmp_path, module_dir)
        envoys.append(envoy)
        await envoy.start(concurrency=concurrency)
        link = await asyncio.to_thread(service_end.wait_link)
        await _wait_listening(listen, envoy)
        return Rig(envoy, link, servers, listen)

    yield start
    for envoy in envoys:
        await envoy.stop()
    for server in servers:
        await server.stop()


async def _wait_listening(address: tuple[str, int], envoy: Envoy) -> None:
    for _ in range(200):
        try:
            _, writer = await asyncio.open_connection(*address)
        except OSError:
            if not envoy.alive:
                raise AssertionError(f"envoy died:\n{envoy.log()}") from None
            await asyncio.sleep(0.05)
            continue
        writer.close()
        return
    raise AssertionError(f"envoy's listener never opened:\n{envoy.log()}")
