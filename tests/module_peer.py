"""A Python stand-in for the C shim's end of the module link (tests only).

It does what ``extproc/module/extproc_module.c`` does with the region and the link, with
the same constants (``extproc.wire``): a memfd of ``REGION_SIZE`` sealed against shrinking
and growing, the header, a ``SOCK_SEQPACKET`` connection with the hello and the memfd as
SCM_RIGHTS, seqlock reads of the entries, success counters, and attempt records. It makes
no routing decision: the tests say which host an attempt ran on and how it ended.
"""

from __future__ import annotations

import array
import fcntl
import mmap
import os
import socket
import struct
from pathlib import Path

from extproc.server.module_region import Entry, counter_index, entry_offset, unpack_entry
from extproc.wire import (
    ENTRY_SIZE,
    HEADER_FORMAT,
    HELLO_FORMAT,
    HELLO_MAGIC,
    HELLO_SIZE,
    HOST_SLOTS,
    LAYOUT_VERSION,
    MAX_HOSTS,
    MAX_SERVICES,
    MAX_WORKERS,
    NO_HOST_INDEX,
    NO_HOST_SLOT,
    RECORD_FORMAT,
    RECORD_KIND_ATTEMPT,
    RECORD_MAGIC,
    REGION_MAGIC,
    REGION_SIZE,
)

SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL


def hello(pid: int, concurrency: int) -> bytes:
    """The hello the module sends first."""
    fields = struct.pack(HELLO_FORMAT, HELLO_MAGIC, LAYOUT_VERSION, REGION_SIZE, pid, concurrency)
    return fields + bytes(HELLO_SIZE - len(fields))


def record(
    *,
    worker: int = 0,
    entry: int = 0,
    version: int = 0,
    host_index: int = NO_HOST_INDEX,
    host_slot: int = NO_HOST_SLOT,
    status: int = 0,
    flags: int = 0,
    successes_before: int = 0,
    address: str = "",
    kind: int = RECORD_KIND_ATTEMPT,
) -> bytes:
    """One attempt's record, as the module's access logger sends it."""
    raw = address.encode()
    return struct.pack(
        RECORD_FORMAT,
        RECORD_MAGIC,
        worker,
        entry,
        version,
        host_index,
        host_slot,
        0,
        kind,
        status,
        0,
        flags,
        successes_before,
        len(raw),
        raw,
        b"",
    )


class ModulePeer:
    """One Envoy process's module: its region and its link to the service."""

    def __init__(self, *, pid: int | None = None, concurrency: int = 2, seals: int = SEALS) -> None:
        self.pid = os.getpid() if pid is None else pid
        self.concurrency = concurrency
        self.memfd = os.memfd_create("extproc-module", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        os.ftruncate(self.memfd, REGION_SIZE)
        fcntl.fcntl(self.memfd, fcntl.F_ADD_SEALS, seals)
        self.map = mmap.mmap(self.memfd, REGION_SIZE, mmap.MAP_SHARED)
        self.map[: struct.calcsize(HEADER_FORMAT)] = struct.pack(
            HEADER_FORMAT,
            REGION_MAGIC,
            LAYOUT_VERSION,
            REGION_SIZE,
            MAX_SERVICES,
            MAX_HOSTS,
            MAX_WORKERS,
            HOST_SLOTS,
            concurrency,
            self.pid,
            0,
            0,
            0,
        )
        self.sock: socket.socket | None = None

    def connect(
        self, path: Path, message: bytes | None = None, fds: list[int] | None = None
    ) -> None:
        """Connect and send the hello with the memfd (or another message and descriptors)."""
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock.connect(str(path))
        data = hello(self.pid, self.concurrency) if message is None else message
        rights = array.array("i", [self.memfd] if fds is None else fds)
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, rights.tobytes())] if rights else []
        self.sock.sendmsg([data], ancillary)

    def send(self, data: bytes) -> None:
        """One message on the link (a record, or anything a test makes up)."""
        assert self.sock is not None
        self.sock.send(data)

    def disconnect(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def close(self) -> None:
        self.disconnect()
        self.map.close()
        os.close(self.memfd)

    # --- the region, as the module reads and writes it ------------------------------------

    def entry(self, index: int) -> Entry | None:
        """A seqlock read of entry ``index``: None while it is being written or unused."""
        start = entry_offset(index)
        seq = struct.unpack_from("<Q", self.map, start)[0]
        data = bytes(self.map[start : start + ENTRY_SIZE])
        if seq % 2 or struct.unpack_from("<Q", self.map, start)[0] != seq:
            return None
        return unpack_entry(data)

    def seq(self, index: int) -> int:
        return int(struct.unpack_from("<Q", self.map, entry_offset(index))[0])

    def find(self, cluster_name: str) -> tuple[int, Entry]:
        """The entry of a service (the module's name scan)."""
        for index in range(MAX_SERVICES):
            entry = self.entry(index)
            if entry is not None and entry.name == cluster_name:
                return index, entry
        raise LookupError(f"no entry for {cluster_name}")

    def succeed(self, worker: int, slot: int, n: int = 1) -> int:
        """Count ``n`` successes on a host slot in a worker's row; the counter's new value."""
        offset = counter_index(worker, slot) * 8
        value = int(struct.unpack_from("<Q", self.map, offset)[0]) + n
        struct.pack_into("<Q", self.map, offset, value)
        return value

    def successes(self, worker: int, slot: int) -> int:
        return int(struct.unpack_from("<Q", self.map, counter_index(worker, slot) * 8)[0])

    def report(
        self,
        cluster_name: str,
        address: str,
        *,
        worker: int = 0,
        status: int = 503,
        flags: int = 0,
    ) -> None:
        """Send the record the module sends for an attempt on ``address`` of a service.

        A host of the entry goes with its index and slot (and its successes so far); one
        that is not in the entry goes as ``NO_HOST_INDEX``/``NO_HOST_SLOT`` with its address,
        as the module sends it.
        """
        index, entry = self.find(cluster_name)
        addresses = [host.address for host in entry.hosts]
        host_index = addresses.index(address) if address in addresses else NO_HOST_INDEX
        host_slot = entry.hosts[host_index].slot if host_index != NO_HOST_INDEX else NO_HOST_SLOT
        before = self.successes(worker, host_slot) if host_slot != NO_HOST_SLOT else 0
        self.send(
            record(
                worker=worker,
                entry=index,
                version=entry.version,
                host_index=host_index,
                host_slot=host_slot,
                status=status,
                flags=flags,
                successes_before=before,
                address=address,
            )
        )
