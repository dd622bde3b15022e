"""The fleet's ejection message: what is applied, what is refused, and how long it holds."""

from __future__ import annotations

import contextlib
import dataclasses
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from extproc.core.fleet import (
    MAX_MESSAGE_BYTES,
    FleetEjection,
    FleetMessageError,
    decode,
    encode,
    remaining_s,
)
from extproc.core.outlier import OutlierEjectionType

EJECTION = FleetEjection(
    fleet="checkout",
    proxy="pod-a",
    cluster="outbound|80||mydb.com",
    host="10.0.0.1:443",
    kind=OutlierEjectionType.CONSECUTIVE_5XX,
    num_ejections=2,
    ejected_at=1_000.0,
    until=1_060.0,
)


def _decode(raw: bytes) -> FleetEjection:
    return decode(raw, fleet="checkout", proxy="pod-b")


def _with(**changes: object) -> bytes:
    data = json.loads(encode(EJECTION))
    data.update(changes)
    return json.dumps(data).encode()


def test_a_message_reads_back_as_the_ejection_it_announces() -> None:
    assert _decode(encode(EJECTION)) == EJECTION
    v6 = dataclasses.replace(EJECTION, host="[2001:db8::1]:443")
    assert _decode(encode(v6)) == v6


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"\xff", "not JSON"),
        (b"[]", "not an object"),
        (_with(v=2), "version 2, not 1"),
        (_with(extra=1), "fields ['extra'] wrong"),
        (_with(host="mydb.com:443"), "host is not ip:port"),
        (_with(host="10.0.0.1:0"), "host is not ip:port"),
        (_with(kind="SUCCESS_RATE"), "unknown ejection type"),
        (_with(num_ejections=True), "num_ejections is not a count"),
        (_with(until=float("inf")), "until is not a time"),
        (_with(cluster=""), "cluster is not a name"),
        (_with(fleet="other"), "fleet 'other', not ours"),
        (_with(proxy="pod-b"), "our own"),
        (b" " * (MAX_MESSAGE_BYTES + 1), f"{MAX_MESSAGE_BYTES + 1} bytes, over"),
    ],
    ids=[
        "not-json",
        "not-object",
        "version",
        "extra-field",
        "host-name",
        "port-0",
        "kind",
        "count-bool",
        "infinite-end",
        "empty-cluster",
        "foreign-fleet",
        "own",
        "too-long",
    ],
)
def test_a_malformed_foreign_or_own_message_is_refused_with_a_reason(raw: bytes, why: str) -> None:
    with pytest.raises(FleetMessageError, match=why.replace("[", r"\[").replace("]", r"\]")):
        _decode(raw)


@given(st.binary(max_size=MAX_MESSAGE_BYTES + 8))
def test_no_bytes_ever_decode_to_anything_but_an_ejection_or_a_refusal(raw: bytes) -> None:
    with contextlib.suppress(FleetMessageError):
        assert isinstance(_decode(raw), FleetEjection)


def test_an_end_is_read_on_the_receivers_clock_and_bounded_by_its_longest_ejection() -> None:
    assert remaining_s(EJECTION, now_wall=1_030.0, longest_s=300.0) == 30.0
    # A clock far behind the sender's, or a hostile end: no longer than the receiver's own
    # longest ejection.
    assert remaining_s(EJECTION, now_wall=500.0, longest_s=300.0) == 300.0
    # Already over here, or an end not after its start: ignored.
    assert remaining_s(EJECTION, now_wall=1_060.0, longest_s=300.0) is None
    backwards = dataclasses.replace(EJECTION, until=999.0)
    assert remaining_s(backwards, now_wall=900.0, longest_s=300.0) is None
