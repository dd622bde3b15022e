"""The C shim's own copies of the contract agree with ``extproc/wire.py`` ("module path")."""

from __future__ import annotations

import re
import struct

import pytest

from extproc import wire
from extproc.module.build import SOURCE
from extproc.wire import ModuleLb

pytestmark = pytest.mark.module


def c_defines() -> dict[str, int | bytes]:
    """The source's ``#define NAME value`` lines: integers (expressions evaluated) and strings."""
    raw: dict[str, str] = {}
    text = SOURCE.read_text().replace("\\\n", " ")
    for name, value in re.findall(r"^#define ([A-Z][A-Z0-9_]*)[ \t]+(.+)$", text, re.M):
        raw[name] = re.sub(r"/\*.*?\*/", "", value).strip()
    values: dict[str, int | bytes] = {}

    def value_of(name: str) -> int | bytes:
        if name not in values:
            expr = raw[name]
            if expr.startswith('"'):
                values[name] = expr.strip('"').encode()
            else:
                expr = re.sub(r"\b(0x[0-9a-fA-F]+|\d+)u(ll)?\b", r"\1", expr)
                expr = re.sub(r"\b([A-Z][A-Z0-9_]*)\b", lambda m: str(value_of(m[1])), expr)
                values[name] = int(eval(expr.replace("/", "//")))  # our own source
        return values[name]

    return {name: value_of(name) for name in raw if not raw[name].startswith("__")}


def offsets(fmt: str) -> list[int]:
    """Where each field of a little-endian struct format starts."""
    fields = re.findall(r"(\d*)([a-zA-Z])", fmt.lstrip("<"))
    starts, at = [], 0
    for count, code in fields:
        if code == "x":
            at += int(count or 1)
            continue
        starts.append(at)
        at += struct.calcsize("<" + count + code)
    return starts


C = c_defines()


@pytest.mark.parametrize(
    ("c_name", "wire_value"),
    [
        ("REGION_MAGIC", wire.REGION_MAGIC),
        ("HELLO_MAGIC", wire.HELLO_MAGIC),
        ("RECORD_MAGIC", wire.RECORD_MAGIC),
        ("ABI_VERSION", wire.MODULE_ABI_VERSION.encode()),
        ("LAYOUT_VERSION", wire.LAYOUT_VERSION),
        ("PAGE_SIZE", wire.PAGE_SIZE),
        ("MAX_SERVICES", wire.MAX_SERVICES),
        ("MAX_HOSTS", wire.MAX_HOSTS),
        ("MAX_WORKERS", wire.MAX_WORKERS),
        ("HOST_SLOTS", wire.HOST_SLOTS),
        ("ENTRIES_OFFSET", wire.ENTRIES_OFFSET),
        ("ENTRY_SIZE", wire.ENTRY_SIZE),
        ("COUNTERS_OFFSET", wire.COUNTERS_OFFSET),
        ("REGION_SIZE", wire.REGION_SIZE),
        ("HELLO_SIZE", wire.HELLO_SIZE),
        ("RECORD_SIZE", wire.RECORD_SIZE),
        ("RECONNECT_MS", wire.MODULE_RECONNECT_MS),
        ("HEADER_DROPPED_OFFSET", wire.HEADER_DROPPED_OFFSET),
        ("HEADER_BAD_SNAPSHOTS_OFFSET", wire.HEADER_BAD_SNAPSHOTS_OFFSET),
        ("HEADER_OVERRIDES_REFUSED_OFFSET", wire.HEADER_OVERRIDES_REFUSED_OFFSET),
        ("ENTRY_HOSTS_OFFSET", wire.ENTRY_HOSTS_OFFSET),
        ("ENTRY_NAME_MAX", wire.ENTRY_NAME_MAX),
        ("ERROR_CODES_BITS", wire.ERROR_CODES_BITS),
        ("ENTRY_FLAG_WITHHELD", wire.ENTRY_FLAG_WITHHELD),
        ("HOST_SIZE", wire.HOST_SIZE),
        ("HOST_ADDR_MAX", wire.HOST_ADDR_MAX),
        ("NO_HOST_SLOT", wire.NO_HOST_SLOT),
        ("NO_HOST_INDEX", wire.NO_HOST_INDEX),
        ("RECORD_KIND_ATTEMPT", wire.RECORD_KIND_ATTEMPT),
        ("ATTEMPT_LOGGER_NAME", wire.MODULE_ATTEMPT_LOGGER.encode()),
        ("LB_ROUND_ROBIN", ModuleLb.ROUND_ROBIN),
        ("LB_LEAST_REQUEST", ModuleLb.LEAST_REQUEST),
        ("LB_RANDOM", ModuleLb.RANDOM),
        ("LB_ENVOY", ModuleLb.ENVOY),
    ],
)
def test_a_number_of_the_contract_is_the_same_on_both_sides(
    c_name: str, wire_value: int | bytes
) -> None:
    assert C[c_name] == wire_value


def test_the_entry_field_offsets_are_those_of_the_wire_format() -> None:
    seq, version, name_len, lb, flags, n_hosts, codes, choices, _, name = offsets(
        wire.ENTRY_HEAD_FORMAT
    )
    assert seq == 0
    assert (version, name_len, lb, flags) == (
        C["ENTRY_VERSION_OFFSET"], C["ENTRY_NAME_LEN_OFFSET"], C["ENTRY_LB_OFFSET"],
        C["ENTRY_FLAGS_OFFSET"],
    )  # fmt: skip
    assert (n_hosts, codes, choices, name) == (
        C["ENTRY_N_HOSTS_OFFSET"], C["ENTRY_ERROR_CODES_OFFSET"], C["ENTRY_CHOICE_COUNT_OFFSET"],
        C["ENTRY_NAME_OFFSET"],
    )  # fmt: skip
    weight, slot, addr_len, addr = offsets(wire.HOST_FORMAT)
    assert (weight, slot, addr_len, addr) == (
        0, C["HOST_SLOT_OFFSET"], C["HOST_ADDR_LEN_OFFSET"], C["HOST_ADDR_OFFSET"],
    )  # fmt: skip
    assert struct.calcsize(wire.HOST_FORMAT) == C["HOST_SIZE"]


def test_the_header_counters_are_where_the_wire_format_puts_them() -> None:
    fields = offsets(wire.HEADER_FORMAT)
    assert fields[-3:] == [
        C["HEADER_DROPPED_OFFSET"], C["HEADER_BAD_SNAPSHOTS_OFFSET"],
        C["HEADER_OVERRIDES_REFUSED_OFFSET"],
    ]  # fmt: skip


def test_the_record_fields_are_where_the_wire_format_puts_them() -> None:
    fields = offsets(wire.RECORD_FORMAT)
    magic, worker, entry, version, index, slot, _, kind, status, _, flags = fields[:11]
    successes, addr_len, addr, reserved = fields[11:]
    assert magic == 0
    assert (worker, entry, version, index, slot) == (
        C["RECORD_WORKER_OFFSET"], C["RECORD_ENTRY_OFFSET"], C["RECORD_VERSION_OFFSET"],
        C["RECORD_HOST_INDEX_OFFSET"], C["RECORD_HOST_SLOT_OFFSET"],
    )  # fmt: skip
    assert (kind, status, flags, successes) == (
        C["RECORD_KIND_OFFSET"], C["RECORD_STATUS_OFFSET"], C["RECORD_FLAGS_OFFSET"],
        C["RECORD_SUCCESSES_OFFSET"],
    )  # fmt: skip
    assert (addr_len, addr) == (C["RECORD_ADDR_LEN_OFFSET"], C["RECORD_ADDR_OFFSET"])
    assert reserved + 24 == struct.calcsize(wire.RECORD_FORMAT) == C["RECORD_SIZE"]
