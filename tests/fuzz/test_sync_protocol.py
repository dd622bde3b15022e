"""Fuzzing the fast path's sync protocol (``POST /v1/sync``, ``extproc.server.sync``).

Bodies are what ``extproc/render/bridge.lua`` sends (``s <ip:port> <n>``, ``e <ip:port>
<status>``, ``e <ip:port> <code> c|r|t``), near misses of it (odd numbers, hosts, words,
separators), random text, and random edits of all three; service names are the real
cluster names and near misses. Whatever arrives:

- ``SyncEndpoint.sync`` returns (no exception), a table exactly for a known service;
- a table names only that service's hosts, with positive weights, and its version never
  goes down;
- no outcome is recorded for a host that is not one of that service's hosts (outlier state
  of the other services, metrics), and no host is added.

The same bodies, and malformed HTTP, also go through the real ``SyncServer`` on
127.0.0.1:0 for a tenth of the examples: the answer is never a 5xx and the server keeps
answering.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from extproc.core.hostset import HostView
from extproc.core.reports import Report, parse_reports
from extproc.core.table import ServiceTable
from extproc.server.metrics import Metrics
from extproc.server.sync import SyncEndpoint, SyncServer
from extproc.wire import SERVICE_HEADER, SYNC_AUTHORITY, SYNC_PATH
from tests.fuzz import world

# Huge header lines and numbers are the point here; hypothesis warns when it prints them.
pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")

# -- strategies ------------------------------------------------------------------------

_hosts = st.one_of(
    st.sampled_from(world.ALL_HOSTS),
    st.sampled_from(world.FOREIGN_HOSTS),
    st.text(max_size=24),
)
# Numbers as Lua prints them, and what it never prints: signs, other digit systems (which
# str.isdigit accepts), floats, hex, more digits than int() takes.
_numbers = st.one_of(
    st.integers(0, 999).map(str),
    st.integers().map(str),
    st.sampled_from(
        [
            "",
            "0",
            "-1",
            "+5",
            "0x1f",
            "1_000",
            "5e2",
            "503.0",
            "\u00b2",
            "\u0665\u0660\u0663",
            "\uff15\uff10\uff13",
            "0" * 40 + "503",
        ]
    ),
    st.integers(4000, 6000).map(lambda n: "9" * n),
    st.text(max_size=6),
)
_origins = st.one_of(
    st.sampled_from(["c", "r", "t", "C", "x", "cr", "\uff43"]), st.text(max_size=3)
)
_separators = st.sampled_from([" "] * 6 + ["  ", "\t", "\x0b", "\x0c", "\u00a0", "\u3000"])
_newlines = st.sampled_from(["\n", "\n", "\n", "\r\n", "\r", "\x00", "\x1c", "\x85", "\u2028", ""])


# Every strategy is built once, here: building one inside a draw costs more than the draw.
_lua_hosts = st.sampled_from(world.ALL_HOSTS + world.FOREIGN_HOSTS)
_lua_kinds = st.sampled_from(["s", "e", "local"])
_lua_counts = st.integers(0, 50)
_lua_statuses = st.sampled_from([429, 500, 502, 503, 504, 200, 404])
_lua_local = st.sampled_from(["503 c", "503 r", "504 t"])


@st.composite
def _lua_line(draw: st.DrawFn) -> str:
    """A line as bridge.lua writes it, for any host."""
    host, kind = draw(_lua_hosts), draw(_lua_kinds)
    if kind == "s":
        return f"s {host} {draw(_lua_counts)}"
    if kind == "e":
        return f"e {host} {draw(_lua_statuses)}"
    return f"e {host} {draw(_lua_local)}"


_lua_lines = _lua_line()
_odd_words = (
    st.one_of(st.sampled_from(["E", "S", "x", "", "ee"]), st.text(max_size=2)),
    _hosts,
    _numbers,
    _origins,
)
_one_or_two = st.integers(1, 2)
_word_places = st.integers(0, 3)
_tenths = st.integers(0, 9)
_extra_words = st.lists(st.text(max_size=4), min_size=1, max_size=2)


@st.composite
def _odd_line(draw: st.DrawFn) -> str:
    """A line of the protocol's shape with one or two of its words replaced by odd ones."""
    words = draw(_lua_lines).split(" ")
    for _ in range(draw(_one_or_two)):
        where = draw(_word_places)
        if where < len(words):
            words[where] = draw(_odd_words[where])
        else:
            words.append(draw(_origins))
    if draw(_tenths) == 0:
        words += draw(_extra_words)
    return draw(_separators).join(words)


_edits = st.integers(0, 4)
_places = st.integers(0, 1 << 16)
_edit_kinds = st.sampled_from(["insert", "delete", "replace"])
_edit_chars = st.one_of(st.sampled_from(" \n\r\t0123456789sec:.[]-"), st.characters())


def _mutate(draw: st.DrawFn, text: str) -> str:
    """``text`` with a few characters inserted, deleted or replaced."""
    chars = list(text)
    for _ in range(draw(_edits)):
        where = draw(_places) % (len(chars) + 1)
        edit, char = draw(_edit_kinds), draw(_edit_chars)
        if edit == "insert":
            chars.insert(where, char)
        elif where < len(chars):
            chars[where : where + 1] = [] if edit == "delete" else [char]
    return "".join(chars)


_lines = st.lists(st.one_of(_lua_lines, _lua_lines, _odd_line(), st.text(max_size=30)), max_size=12)
_booleans = st.booleans()


@st.composite
def _body(draw: st.DrawFn) -> str:
    body = "".join(line + draw(_newlines) for line in draw(_lines))
    return _mutate(draw, body) if draw(_booleans) else body


@st.composite
def _mutated_name(draw: st.DrawFn) -> str:
    return _mutate(draw, draw(st.sampled_from(world.CLUSTER_NAMES)))


_bodies = st.one_of(
    _body(),
    _body(),
    _body(),
    st.text(),
    st.binary().map(lambda raw: raw.decode("utf-8", "replace")),
)
_service_names = st.one_of(
    st.sampled_from(world.CLUSTER_NAMES),
    st.sampled_from(world.CLUSTER_NAMES),
    st.sampled_from(world.CLUSTER_NAMES),
    _mutated_name(),
    st.sampled_from(world.CLUSTER_NAMES).map(str.upper),
    st.text(max_size=40),
)
_steps = st.lists(
    st.tuples(_service_names, _bodies, st.sampled_from([0.0, 0.0, 0.3, 1.0, 5.0])),
    min_size=1,
    max_size=8,
)

# -- checks ----------------------------------------------------------------------------


def _check_table(text: str, hosts: frozenset[str]) -> int:
    """Assert a table is well formed and names only ``hosts``; its version."""
    assert text.endswith("\n")
    header, *rows = text[:-1].split("\n")
    version, ttl = header.split(" ")
    assert version.isascii()
    assert version.isdigit()
    assert ttl.isascii()
    assert ttl.isdigit()
    if rows and rows[0].startswith("lb="):
        assert rows.pop(0).removeprefix("lb=") in {"ROUND_ROBIN", "LEAST_REQUEST", "RANDOM"}
    if rows and rows[0].startswith("codes="):
        codes = rows.pop(0).removeprefix("codes=").split(",")
        assert all(code.isascii() and code.isdigit() for code in codes)
    named = []
    for row in rows:
        host, weight = row.split(" ")
        assert host in hosts, f"{host!r} is not a host of the service"
        assert weight.isascii()
        assert weight.isdigit()
        assert int(weight) > 0
        named.append(host)
    assert len(named) == len(set(named)), f"a host listed twice: {named}"
    return int(version)


def _named_hosts(body: str) -> set[str]:
    """Every word of the body that sits where a report names its host."""
    return {parts[1] for line in body.splitlines() if len(parts := line.split()) > 1}


def _snapshot(table: ServiceTable, now: float) -> dict[str, list[HostView]]:
    return {name: list(cluster.hosts(now)) for name, cluster in table.clusters.items()}


# -- SyncEndpoint.sync ------------------------------------------------------------------------


@given(steps=_steps)
def test_no_sync_body_or_service_name_escapes_or_reaches_a_foreign_host(
    steps: list[tuple[str, str, float]],
) -> None:
    table, clock = world.build()
    metrics = Metrics(lambda: table, clock.now)
    endpoint = SyncEndpoint(lambda: table, clock, version_base=0, metrics=metrics)
    versions: dict[str, int] = {}
    named: set[str] = set()
    for name, body, advance_s in steps:
        now = clock.advance(advance_s)
        before = _snapshot(table, now)
        answer = endpoint.sync(name, body)
        after = _snapshot(table, now)
        named |= _named_hosts(body)
        if name not in table.clusters:
            assert answer is None
            assert after == before
            continue
        assert answer is not None
        version = _check_table(answer, world.HOSTS[name])
        assert version >= versions.get(name, 0)
        versions[name] = version
        # Only the named service changes, and it keeps its hosts.
        assert {n: v for n, v in after.items() if n != name} == {
            n: v for n, v in before.items() if n != name
        }
        assert {view.address for view in after[name]} == world.HOSTS[name]
    for cluster_name in {*world.CLUSTER_NAMES, *(name for name, _, _ in steps)}:
        for host in named - world.HOSTS.get(cluster_name, frozenset()):
            assert not any(metrics.host_stats(cluster_name, host).values()), (
                f"an outcome counted for {host!r}, not a host of {cluster_name!r}"
            )


_words = st.text(
    alphabet=st.characters(codec="ascii", exclude_categories=["Cc", "Zs"]), min_size=1, max_size=20
)
_reports = st.one_of(
    st.builds(Report, st.just("s"), _words, st.integers(0, 10**9 - 1)),
    st.builds(Report, st.just("e"), _words, st.integers(0, 999)),
    st.builds(Report, st.just("e"), _words, st.integers(0, 999), st.sampled_from(["c", "r", "t"])),
)


@given(reports=st.lists(_reports, max_size=20))
def test_every_line_the_lua_filter_can_write_parses_back_to_its_report(
    reports: list[Report],
) -> None:
    body = "".join(
        f"{r.kind} {r.host} {r.value}" + (f" {r.origin}" if r.origin else "") + "\n"
        for r in reports
    )
    assert parse_reports(body) == reports


# -- through the real SyncServer ---------------------------------------------------------

#: The HTTP examples cost a connection each: a tenth of the profile's examples.
_HTTP_SETTINGS = settings(
    max_examples=max(20, settings.default.max_examples // 10),
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


#: What the server's event loop reported as unhandled (an exception out of a connection).
_LOOP_ERRORS: list[dict[str, Any]] = []


@pytest.fixture(scope="module")
def sync_address() -> Iterator[tuple[str, int]]:
    """A SyncServer on 127.0.0.1:0, served by an event loop in its own thread."""
    table, clock = world.build()
    server = SyncServer(
        SyncEndpoint(lambda: table, clock, metrics=Metrics(lambda: table, clock.now))
    )
    loop = asyncio.new_event_loop()
    loop.set_exception_handler(lambda _, context: _LOOP_ERRORS.append(context))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(server.start("127.0.0.1", 0), loop).result(5)
        yield server.address
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(5)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
    assert _LOOP_ERRORS == []


def _exchange(address: tuple[str, int], raw: bytes) -> bytes:
    """Send ``raw``, end our side, and read until the server closes (or resets)."""
    received = bytearray()
    with socket.create_connection(address, timeout=10) as conn:
        try:
            conn.sendall(raw)
            conn.shutdown(socket.SHUT_WR)
            while chunk := conn.recv(65536):
                received += chunk
        except TimeoutError:
            raise  # the server hung on it
        except OSError:
            pass  # the server dropped a request it would not read: allowed, not an answer
    return bytes(received)


def _responses(raw: bytes) -> list[tuple[int, bytes]]:
    """Parse back-to-back HTTP/1.1 responses with content-length bodies."""
    responses = []
    while raw:
        head, sep, rest = raw.partition(b"\r\n\r\n")
        assert sep, f"a truncated response: {raw[:200]!r}"
        status_line, *header_lines = head.split(b"\r\n")
        version, status, _ = status_line.split(b" ", 2)
        assert version == b"HTTP/1.1"
        headers = dict(line.split(b": ", 1) for line in header_lines)
        length = int(headers[b"content-length"])
        assert len(rest) >= length
        responses.append((int(status), rest[:length]))
        raw = rest[length:]
    return responses


def _sync_request(service: bytes, body: bytes, *, extra: bytes = b"") -> bytes:
    return b"POST %s HTTP/1.1\r\nhost: %s\r\n%s: %s\r\ncontent-length: %d\r\n%s\r\n%s" % (
        SYNC_PATH.encode(),
        SYNC_AUTHORITY.encode(),
        SERVICE_HEADER.encode(),
        service,
        len(body),
        extra,
        body,
    )


def _assert_answers(address: tuple[str, int]) -> None:
    """The server is up: a new connection gets a table."""
    name = world.CLUSTER_NAMES[0]
    answers = _responses(_exchange(address, _sync_request(name.encode(), b"")))
    assert [status for status, _ in answers] == [200]
    _check_table(answers[0][1].decode(), world.HOSTS[name])


_latin1_names = _service_names.filter(lambda s: not set(s) & {"\r", "\n"}).map(
    lambda s: s.encode("latin-1", "replace")
)


@_HTTP_SETTINGS
@given(service=_latin1_names, body=_bodies.map(lambda s: s.encode("utf-8", "surrogatepass")))
def test_a_sync_over_http_answers_a_table_or_a_404_never_a_5xx(
    sync_address: tuple[str, int], service: bytes, body: bytes
) -> None:
    answers = _responses(_exchange(sync_address, _sync_request(service, body)))
    assert _LOOP_ERRORS == []
    assert len(answers) == 1
    status, payload = answers[0]
    name = service.decode("latin-1").strip()
    if name in world.HOSTS:
        assert status == 200
        _check_table(payload.decode(), world.HOSTS[name])
    else:
        assert status == 404


_request_lines = st.one_of(
    st.sampled_from(
        [
            b"POST /v1/sync HTTP/1.1",
            b"POST /v1/sync",
            b"POST",
            b"",
            b" ",
            b"GET /v1/sync HTTP/1.1",
            b"POST /v1/sync?x=1 HTTP/1.1",
            b"POST  /v1/sync  HTTP/1.1",
            b"POST /v1/sync HTTP/9.9",
            b"\x00\xff\xfe",
            b"POST /" + b"a" * 70_000 + b" HTTP/1.1",
        ]
    ),
    st.binary(max_size=60).filter(lambda b: b"\n" not in b),
)
_header_values = st.one_of(
    st.sampled_from(
        [b"0", b"5", b"-1", b"abc", b"", b" 5 ", b"+5", b"0x10", b"1e3", b"99999999999999999999"]
    ),
    st.binary(max_size=20).filter(lambda b: b"\n" not in b),
)
_header_lines = st.one_of(
    st.tuples(
        st.sampled_from([b"content-length", b"Content-Length", b"x-extproc-service"]),
        _header_values,
    ).map(lambda kv: kv[0] + b": " + kv[1]),
    st.just(b"transfer-encoding: chunked"),
    st.just(b"connection: close"),
    st.just(b"no colon here"),
    st.just(b"x-huge: " + b"v" * 70_000),
    st.binary(max_size=40).filter(lambda b: b"\n" not in b),
)


@st.composite
def _raw_requests(draw: st.DrawFn) -> bytes:
    newline = draw(st.sampled_from([b"\r\n", b"\n", b"\r"]))
    lines = [draw(_request_lines), *draw(st.lists(_header_lines, max_size=6))]
    if draw(st.integers(0, 9)) == 0:
        lines += [b"x-many-%d: 1" % i for i in range(5000)]
    raw = newline.join(lines) + newline + newline + draw(st.binary(max_size=200))
    if draw(st.booleans()):
        raw += _sync_request(world.CLUSTER_NAMES[0].encode(), b"")  # a second, good request
    return raw


@_HTTP_SETTINGS
@given(raw=_raw_requests())
def test_malformed_http_never_gets_a_5xx_and_the_sync_endpoint_keeps_answering(
    sync_address: tuple[str, int], raw: bytes
) -> None:
    # Every answer is a table or a 4xx; a request the server cannot read may end the
    # connection without one.
    for status, payload in _responses(_exchange(sync_address, raw)):
        assert status < 500, payload[:200]
    assert _LOOP_ERRORS == []
    _assert_answers(sync_address)


# -- what the fuzzing found, kept as plain tests ---------------------------------------


def test_a_report_for_a_host_outside_the_service_counts_no_outcome() -> None:
    table, clock = world.build()
    metrics = Metrics(lambda: table, clock.now)
    endpoint = SyncEndpoint(lambda: table, clock, metrics=metrics)
    mydb, other = world.CLUSTER_NAMES[:2]
    stranger, neighbour = "10.0.0.9:443", "10.0.1.2:443"
    endpoint.sync(mydb, f"s {stranger} 1\ne {stranger} 503\ns {neighbour} 2\ne {neighbour} 503 c\n")
    assert metrics.host_stats(mydb, stranger) == dict.fromkeys(metrics.host_stats(mydb, ""), 0)
    assert metrics.host_stats(mydb, neighbour) == dict.fromkeys(metrics.host_stats(mydb, ""), 0)
    assert metrics.host_stats(other, neighbour) == dict.fromkeys(metrics.host_stats(other, ""), 0)


_HOST = world.ALL_HOSTS[0]


@pytest.mark.parametrize(
    "line",
    [
        f"s {_HOST} \u00b2",
        f"e {_HOST} \u00b2",
        f"s {_HOST} {'9' * 4301}",
        f"e {_HOST} {'9' * 4301} c",
        f"e {_HOST} \u0665\u0660\u0663",
        f"e {_HOST} \uff15\uff10\uff13 r",
        f"e {_HOST} 0503",
        f"s {_HOST} 1234567890",
    ],
    ids=[
        "superscript-two-count",
        "superscript-two-status",
        "4301-digit-count",
        "4301-digit-code",
        "arabic-indic-status",
        "fullwidth-code",
        "four-digit-status",
        "ten-digit-count",
    ],
)
def test_a_number_lua_never_writes_skips_its_line(line: str) -> None:
    body = f"{line}\ns {_HOST} 2\n"
    assert parse_reports(body) == [Report("s", _HOST, 2)]
