"""The module path's region and messages as bytes: layout, entries, seqlock, slots, records."""

from __future__ import annotations

import dataclasses
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from extproc import wire
from extproc.core.outcome import (
    UPSTREAM_CONNECTION_FAILURE,
    UPSTREAM_CONNECTION_TERMINATION,
    UPSTREAM_OVERFLOW,
)
from extproc.core.outlier import AttemptResult
from extproc.core.policy import HashRing, LbAlgorithm, SlowStart
from extproc.server.module_region import (
    BODY_SIZE,
    EMPTY_BODY,
    Entry,
    EntryHost,
    EntryIndexes,
    HostSlots,
    Record,
    attempt_results,
    counter_index,
    decode_record,
    entry_offset,
    error_codes,
    module_lb,
    pack_entry,
    parse_header,
    parse_hello,
    unpack_entry,
    write_entry,
)
from extproc.testing import endpoint, outlier, service
from extproc.wire import ModuleLb
from tests.attribution import CASES, Case, Role, normal
from tests.module_peer import hello, record

ENTRY = Entry(
    name="outbound|80||mydb.com",
    version=1_700_000_000_000_007,
    lb=ModuleLb.LEAST_REQUEST,
    withheld=False,
    error_codes=frozenset(range(500, 600)),
    hosts=(
        EntryHost("52.119.226.80:80", 70_000, 0),
        EntryHost("[2001:db8::1]:8443", 30_000, 4095),
    ),
)


# --- the layout -----------------------------------------------------------------------------


def _offset(fmt: str, field: int) -> int:
    """Where field ``field`` (0-based) of a little-endian struct format starts."""
    codes = struct.Struct(fmt).format.lstrip("<")
    items: list[str] = []
    number = ""
    for char in codes:
        if char.isdigit():
            number += char
            continue
        items.append(number + char)
        number = ""
    return struct.calcsize("<" + "".join(items[:field]))


@pytest.mark.parametrize(
    ("fmt", "field", "offset"),
    [
        (wire.HEADER_FORMAT, 1, 8),  # layout
        (wire.HEADER_FORMAT, 7, 32),  # concurrency
        (wire.HEADER_FORMAT, 8, 36),  # pid
        (wire.HEADER_FORMAT, 9, wire.HEADER_DROPPED_OFFSET),
        (wire.HEADER_FORMAT, 10, wire.HEADER_BAD_SNAPSHOTS_OFFSET),
        (wire.HEADER_FORMAT, 11, wire.HEADER_OVERRIDES_REFUSED_OFFSET),
        (wire.ENTRY_HEAD_FORMAT, 1, 8),  # version
        (wire.ENTRY_HEAD_FORMAT, 2, 16),  # name_len
        (wire.ENTRY_HEAD_FORMAT, 3, 18),  # lb
        (wire.ENTRY_HEAD_FORMAT, 4, 19),  # flags
        (wire.ENTRY_HEAD_FORMAT, 5, 20),  # n_hosts
        (wire.ENTRY_HEAD_FORMAT, 6, 24),  # error_codes
        (wire.ENTRY_HEAD_FORMAT, 7, 104),  # choice_count
        (wire.ENTRY_HEAD_FORMAT, 9, 112),  # name
        (wire.HOST_FORMAT, 1, 4),  # host_slot
        (wire.HOST_FORMAT, 2, 6),  # addr_len
        (wire.HOST_FORMAT, 4, 8),  # addr
        (wire.RECORD_FORMAT, 3, 8),  # version
        (wire.RECORD_FORMAT, 4, 16),  # host index
        (wire.RECORD_FORMAT, 5, 18),  # host_slot
        (wire.RECORD_FORMAT, 7, 22),  # kind
        (wire.RECORD_FORMAT, 8, 24),  # response code
        (wire.RECORD_FORMAT, 10, 32),  # flags
        (wire.RECORD_FORMAT, 11, 40),  # successes before
        (wire.RECORD_FORMAT, 12, 48),  # addr_len
        (wire.RECORD_FORMAT, 14, 104),  # reserved
    ],
)
def test_every_field_sits_at_the_offset_of_the_contract(fmt: str, field: int, offset: int) -> None:
    assert _offset(fmt, field) == offset


def test_the_region_sizes_add_up_as_the_contract_says() -> None:
    assert struct.calcsize(wire.HEADER_FORMAT) == 64 <= wire.HEADER_SIZE == 128
    assert struct.calcsize(wire.ENTRY_HEAD_FORMAT) == wire.ENTRY_HOSTS_OFFSET == 288
    assert struct.calcsize(wire.HOST_FORMAT) == wire.HOST_SIZE
    assert wire.ENTRY_SIZE == wire.ENTRY_HOSTS_OFFSET + wire.MAX_HOSTS * wire.HOST_SIZE == 4384
    assert wire.COUNTERS_OFFSET % wire.PAGE_SIZE == 0
    assert wire.COUNTERS_OFFSET >= wire.ENTRIES_OFFSET + wire.MAX_SERVICES * wire.ENTRY_SIZE
    assert wire.REGION_SIZE == wire.COUNTERS_OFFSET + wire.MAX_WORKERS * wire.HOST_SLOTS * 8
    assert wire.REGION_SIZE < 1 << 32
    assert struct.calcsize(wire.RECORD_FORMAT) == wire.RECORD_SIZE == 128
    assert struct.calcsize(wire.HELLO_FORMAT) <= wire.HELLO_SIZE == 64
    # Natural alignment: seq words and counters are whole u64s.
    assert wire.ENTRIES_OFFSET % 8 == wire.ENTRY_SIZE % 8 == 0
    assert wire.ERROR_CODES_BITS == 80 * 8
    assert wire.NO_HOST_SLOT >= wire.HOST_SLOTS


def test_counters_are_one_row_per_worker_after_the_entries() -> None:
    assert counter_index(0, 0) * 8 == wire.COUNTERS_OFFSET
    assert counter_index(1, 0) - counter_index(0, 0) == wire.HOST_SLOTS
    assert (counter_index(wire.MAX_WORKERS - 1, wire.HOST_SLOTS - 1) + 1) * 8 == wire.REGION_SIZE
    assert entry_offset(wire.MAX_SERVICES - 1) + wire.ENTRY_SIZE <= wire.COUNTERS_OFFSET


# --- hello and header -----------------------------------------------------------------------


def test_a_hello_of_this_layout_names_the_envoy_process() -> None:
    greeting = parse_hello(hello(4242, 2))
    assert greeting is not None
    assert (greeting.pid, greeting.concurrency) == (4242, 2)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        hello(1, 2)[:-1],
        hello(1, 2) + b"\0",
        b"EXTPROCX" + hello(1, 2)[8:],
        hello(1, 2)[:8] + struct.pack("<I", 2) + hello(1, 2)[12:],  # another layout
        hello(1, 2)[:12] + struct.pack("<I", 4096) + hello(1, 2)[16:],  # another size
        hello(1, 2)[:-1] + b"\1",  # the rest is not zero
    ],
    ids=["empty", "short", "long", "magic", "layout", "size", "tail"],
)
def test_any_other_hello_is_refused(data: bytes) -> None:
    assert parse_hello(data) is None


_HEADER_FIELDS = ("layout", "size", "services", "hosts", "workers", "slots")


def _header(other: str = "") -> bytes:
    """A header as the module writes it; ``other`` names a field given another value."""
    values = {
        "layout": wire.LAYOUT_VERSION,
        "size": wire.REGION_SIZE,
        "services": wire.MAX_SERVICES,
        "hosts": wire.MAX_HOSTS,
        "workers": wire.MAX_WORKERS,
        "slots": wire.HOST_SLOTS,
    }
    if other:
        values[other] += 1
    fields = struct.pack(wire.HEADER_FORMAT, wire.REGION_MAGIC, *values.values(), 2, 99, 5, 6, 7)
    return fields + bytes(wire.HEADER_SIZE - len(fields))


def test_the_header_gives_the_modules_own_counters() -> None:
    header = parse_header(_header())
    assert header is not None
    assert (header.concurrency, header.pid) == (2, 99)
    assert (header.dropped, header.bad_snapshots, header.overrides_refused) == (5, 6, 7)


@pytest.mark.parametrize("field", _HEADER_FIELDS)
def test_a_header_of_another_layout_is_refused(field: str) -> None:
    assert parse_header(_header(field)) is None
    assert parse_header(_header()[:64]) is None


# --- entries --------------------------------------------------------------------------------


def _whole(body: bytes, seq: int = 0) -> bytes:
    return struct.pack("<Q", seq) + body


def test_an_entry_reads_back_as_it_was_packed() -> None:
    body = pack_entry(ENTRY)
    assert len(body) == BODY_SIZE
    assert unpack_entry(_whole(body)) == ENTRY


def test_the_withheld_flag_and_the_error_codes_bitmap_are_bits() -> None:
    entry = Entry("c", 3, ModuleLb.RANDOM, True, frozenset({0, 404, 639}), ())
    data = _whole(pack_entry(entry))
    assert data[19] == wire.ENTRY_FLAG_WITHHELD
    bitmap = data[24:104]
    assert bitmap[404 // 8] == 1 << (404 % 8)
    assert bitmap[0] == 1
    assert bitmap[79] == 0x80
    assert unpack_entry(data) == entry


@given(
    st.lists(
        st.tuples(st.ip_addresses().map(str), st.integers(1, 65535), st.integers(1, 100_000)),
        max_size=wire.MAX_HOSTS,
        unique_by=lambda host: (host[0], host[1]),
    ),
    st.integers(0, 2**64 - 1),
    st.sampled_from(list(ModuleLb)),
)
def test_any_table_the_service_can_write_reads_back(
    hosts: list[tuple[str, int, int]], version: int, lb: ModuleLb
) -> None:
    entry = Entry(
        name="outbound|443||db.example.com",
        version=version,
        lb=lb,
        withheld=False,
        error_codes=frozenset({502, 503}),
        hosts=tuple(
            EntryHost(f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}", weight, slot)
            for slot, (ip, port, weight) in enumerate(hosts)
        ),
    )
    assert unpack_entry(_whole(pack_entry(entry))) == entry


@pytest.mark.parametrize(
    "entry",
    [
        Entry("x" * (wire.ENTRY_NAME_MAX + 1), 1, ModuleLb.RANDOM, False, frozenset(), ()),
        Entry("", 1, ModuleLb.RANDOM, False, frozenset(), ()),
        Entry(
            "c",
            1,
            ModuleLb.RANDOM,
            False,
            frozenset(),
            tuple(EntryHost(f"10.0.0.{i}:80", 1, i) for i in range(wire.MAX_HOSTS + 1)),
        ),
        Entry("c", 1, ModuleLb.RANDOM, False, frozenset(), (EntryHost("10.0.0.1:80", 0, 1),)),
        Entry("c", 1, ModuleLb.RANDOM, False, frozenset(), (EntryHost("10.0.0.1:80", 1, 4096),)),
        Entry("c", 1, ModuleLb.RANDOM, False, frozenset(), (EntryHost("db.example:80", 1, 1),)),
        Entry(
            "c",
            1,
            ModuleLb.RANDOM,
            False,
            frozenset(),
            (EntryHost("10.0.0.1:80", 2**31, 1), EntryHost("10.0.0.2:80", 2**31, 2)),
        ),
    ],
    ids=["long-name", "no-name", "too-many-hosts", "zero-weight", "slot", "a-name", "weights"],
)
def test_an_entry_the_module_would_refuse_is_not_packed(entry: Entry) -> None:
    with pytest.raises(ValueError, match=r"."):
        pack_entry(entry)


def test_an_unused_or_corrupt_entry_reads_as_none() -> None:
    assert unpack_entry(_whole(EMPTY_BODY)) is None
    data = bytearray(_whole(pack_entry(ENTRY)))
    data[20:24] = struct.pack("<I", wire.MAX_HOSTS + 1)
    assert unpack_entry(bytes(data)) is None
    data = bytearray(_whole(pack_entry(ENTRY)))
    data[wire.ENTRY_HOSTS_OFFSET + 8] = ord("x")  # a host address that is no IP literal
    assert unpack_entry(bytes(data)) is None


def test_an_entry_is_written_between_an_odd_and_an_even_seq() -> None:
    region = memoryview(bytearray(wire.REGION_SIZE))
    write_entry(region, 3, pack_entry(ENTRY))
    start = entry_offset(3)
    assert struct.unpack_from("<Q", region, start)[0] == 2
    assert unpack_entry(bytes(region[start : start + wire.ENTRY_SIZE])) == ENTRY
    write_entry(region, 3, EMPTY_BODY)
    assert struct.unpack_from("<Q", region, start)[0] == 4
    assert unpack_entry(bytes(region[start : start + wire.ENTRY_SIZE])) is None
    # The neighbours are untouched.
    assert not any(region[entry_offset(2) : start])
    assert not any(region[entry_offset(4) :])


def test_a_seq_left_odd_by_a_service_that_died_ends_even() -> None:
    region = memoryview(bytearray(wire.REGION_SIZE))
    struct.pack_into("<Q", region, entry_offset(0), 7)
    write_entry(region, 0, pack_entry(ENTRY))
    assert struct.unpack_from("<Q", region, entry_offset(0))[0] == 8


@pytest.mark.parametrize(
    ("algorithm", "lb"),
    [
        (LbAlgorithm.ROUND_ROBIN, ModuleLb.ROUND_ROBIN),
        (LbAlgorithm.LEAST_REQUEST, ModuleLb.LEAST_REQUEST),
        (LbAlgorithm.RANDOM, ModuleLb.RANDOM),
    ],
)
def test_each_istio_algorithm_has_its_lb_byte(algorithm: LbAlgorithm, lb: ModuleLb) -> None:
    assert module_lb(service(lb=algorithm)) == lb


@pytest.mark.parametrize(
    "change",
    [{"hash_ring": HashRing()}, {"slow_start": SlowStart(window_s=30.0)}],
    ids=["consistent-hash", "slow-start"],
)
def test_a_service_envoy_balances_alone_gets_no_override(change: dict[str, object]) -> None:
    balanced = dataclasses.replace(service(lb=LbAlgorithm.ROUND_ROBIN), **change)
    assert module_lb(balanced) is ModuleLb.ENVOY


def test_the_module_reports_every_5xx_unless_the_error_codes_say_otherwise() -> None:
    plain = service(endpoints=[endpoint("10.0.0.1")])
    assert error_codes(plain) == frozenset(range(500, 600))
    listed = service(
        endpoints=[endpoint("10.0.0.1")],
        outlier=dataclasses.replace(outlier(), http_error_codes=frozenset({404, 503})),
    )
    assert error_codes(listed) == frozenset({404, 503})


# --- stable numbers -------------------------------------------------------------------------


def test_a_host_keeps_its_slot_while_it_exists() -> None:
    slots = HostSlots()
    slots.update_cluster("a", ["10.0.0.1:80", "10.0.0.2:80"], now=0)
    first = slots.slot("a", "10.0.0.1:80")
    slots.update_cluster("a", ["10.0.0.2:80", "10.0.0.1:80", "10.0.0.3:80"], now=1)
    assert slots.slot("a", "10.0.0.1:80") == first
    assert len({slots.slot("a", h) for h in ("10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80")}) == 3
    assert first is not None
    assert slots.host(first) == ("a", "10.0.0.1:80")


def test_the_same_address_in_two_clusters_gets_two_slots() -> None:
    slots = HostSlots()
    slots.update_cluster("a", ["10.0.0.1:80"], now=0)
    slots.update_cluster("b", ["10.0.0.1:80"], now=0)
    assert slots.slot("a", "10.0.0.1:80") != slots.slot("b", "10.0.0.1:80")


def test_a_freed_slot_waits_ten_seconds_before_another_host_gets_it() -> None:
    slots = HostSlots(capacity=1)
    slots.update_cluster("a", ["10.0.0.1:80"], now=0)
    slots.update_cluster("a", ["10.0.0.2:80"], now=5)
    assert slots.slot("a", "10.0.0.2:80") is None
    assert slots.host(0) is None  # the old host's counters count for nobody meanwhile
    slots.update_cluster("a", ["10.0.0.2:80"], now=5 + wire.HOST_SLOT_REUSE_AFTER_S - 0.001)
    assert slots.slot("a", "10.0.0.2:80") is None
    slots.update_cluster("a", ["10.0.0.2:80"], now=5 + wire.HOST_SLOT_REUSE_AFTER_S)
    assert slots.slot("a", "10.0.0.2:80") == 0


def test_never_used_slots_go_before_freed_ones() -> None:
    slots = HostSlots(capacity=3)
    slots.update_cluster("a", ["10.0.0.1:80"], now=0)
    slots.drop_cluster("a", now=0)
    slots.update_cluster("b", ["10.0.0.2:80", "10.0.0.3:80"], now=0)
    assert {slots.slot("b", "10.0.0.2:80"), slots.slot("b", "10.0.0.3:80")} == {1, 2}
    assert sorted(slot for slot, _, _ in slots) == [1, 2]


def test_a_freed_entry_index_is_given_out_last() -> None:
    indexes = EntryIndexes(capacity=3)
    assert [indexes.index(name) for name in "abc"] == [0, 1, 2]
    assert indexes.index("d") is None
    assert indexes.release("a") == 0
    assert indexes.index("d") == 0
    assert indexes.index("b") == 1
    assert indexes.release("zz") is None


# --- records --------------------------------------------------------------------------------


def test_a_record_decodes_field_by_field() -> None:
    data = record(
        worker=1,
        entry=7,
        version=99,
        host_index=2,
        host_slot=40,
        status=503,
        flags=0x20,
        successes_before=12,
        address="10.0.0.2:80",
    )
    assert decode_record(data) == Record(1, 7, 99, 2, 40, 503, 0x20, 12, "10.0.0.2:80")
    assert decode_record(record(address="10.0.0.3:80")) == Record(
        0, 0, 0, wire.NO_HOST_INDEX, wire.NO_HOST_SLOT, 0, 0, 0, "10.0.0.3:80"
    )


def _poke(data: bytes, offset: int, value: bytes) -> bytes:
    return data[:offset] + value + data[offset + len(value) :]


GOOD = record(host_index=1, host_slot=3, address="10.0.0.2:80")


@pytest.mark.parametrize(
    "data",
    [
        GOOD[:-1],
        GOOD + b"\0",
        b"EXRX" + GOOD[4:],
        record(kind=0, address="10.0.0.2:80"),
        record(worker=wire.MAX_WORKERS, address="10.0.0.2:80"),
        record(entry=wire.MAX_SERVICES, address="10.0.0.2:80"),
        record(host_index=wire.MAX_HOSTS, host_slot=3, address="10.0.0.2:80"),
        record(host_index=1, host_slot=wire.HOST_SLOTS, address="10.0.0.2:80"),
        record(host_index=1, address="10.0.0.2:80"),
        record(host_slot=3, address="10.0.0.2:80"),
        record(host_index=1, host_slot=3),
        record(address="x" * 10),
        _poke(GOOD, 48, bytes([56])),
        _poke(GOOD, 49 + 11, b"1"),
        _poke(GOOD, 20, b"\1"),
        _poke(GOOD, 28, b"\1"),
        _poke(GOOD, 127, b"\1"),
    ],
    ids=[
        "short",
        "long",
        "magic",
        "kind",
        "worker",
        "entry",
        "host-index",
        "host-slot",
        "index-without-slot",
        "slot-without-index",
        "a-host-of-the-snapshot-without-its-address",
        "address-not-an-ip",
        "addr-len",
        "bytes-after-the-address",
        "reserved-20",
        "reserved-28",
        "reserved-tail",
    ],
)
def test_a_malformed_record_decodes_to_none(data: bytes) -> None:
    assert decode_record(data) is None


ADDRESSES = {
    Role.CHOSEN: "127.0.0.11:8443",
    Role.MIDDLE: "127.0.0.12:8443",
    Role.OTHER: "127.0.0.13:8443",
}
OTHER = ADDRESSES[Role.OTHER]


def _results(case: Case) -> dict[Role, list[AttemptResult]]:
    """What the service records, by host, for the attempts Envoy logs in ``case``."""
    recorded: dict[Role, list[AttemptResult]] = {role: [] for role in Role}
    for logged in case.logged:
        rec = decode_record(
            record(status=logged.status, flags=logged.flags, address=ADDRESSES[logged.on])
        )
        assert rec is not None
        recorded[logged.on] += attempt_results(rec)
    return recorded


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_each_attempt_records_what_the_attribution_table_says(case: Case) -> None:
    recorded = _results(case)
    codes = frozenset(case.error_codes)
    assert [normal(r, codes) for r in recorded[Role.CHOSEN]] == [
        normal(r, codes) for r in case.chosen
    ]
    assert recorded[Role.MIDDLE] == list(case.middle)
    assert recorded[Role.OTHER] == ([] if case.other is None else [case.other])


def test_a_late_reset_counts_the_head_then_the_reset() -> None:
    rec = decode_record(record(status=200, flags=UPSTREAM_CONNECTION_TERMINATION, address=OTHER))
    assert rec is not None
    assert [(r.kind.value, r.status) for r in attempt_results(rec)] == [
        ("answer", 200),
        ("connect_failure", None),
    ]


def test_an_overflow_reset_after_the_head_counts_only_the_head() -> None:
    rec = decode_record(record(status=200, flags=UPSTREAM_OVERFLOW, address=OTHER))
    assert rec is not None
    assert [result.status for result in attempt_results(rec)] == [200]


def test_a_client_that_went_away_is_no_upstream_failure() -> None:
    rec = decode_record(record(status=0, flags=0, address=OTHER))
    assert rec is not None
    assert attempt_results(rec) == ()


def test_a_refused_connection_is_a_connect_failure() -> None:
    rec = decode_record(record(status=0, flags=UPSTREAM_CONNECTION_FAILURE, address=OTHER))
    assert rec is not None
    assert [r.kind.value for r in attempt_results(rec)] == ["connect_failure"]
