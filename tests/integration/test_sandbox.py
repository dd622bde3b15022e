"""The sandbox's DNS responder and upstream stand-ins, over real loopback sockets.

Every server binds 127.0.0.1 port 0 and the test reads the port back; every network wait is
bounded by ``asyncio.timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import AsyncIterator

import dns.asyncquery
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest
import trustme

from extproc.sandbox import DnsResponder, Mode, StandIn

EAST = "dynamodb.us-east-1.amazonaws.com"
WEST = "dynamodb.us-west-1.amazonaws.com"
TIMEOUT_S = 2.0


# --- helpers -------------------------------------------------------------------------------


async def _ask(
    responder: DnsResponder, name: str, rdtype: str = "A", *, tcp: bool = False
) -> dns.message.Message:
    host, port = responder.address
    query = dns.message.make_query(name, rdtype)
    if tcp:
        return await dns.asyncquery.tcp(query, host, port=port, timeout=TIMEOUT_S)
    return await dns.asyncquery.udp(query, host, port=port, timeout=TIMEOUT_S)


def _addresses(answer: dns.message.Message) -> list[str]:
    return sorted(rdata.to_text() for rrset in answer.answer for rdata in rrset)


@contextlib.asynccontextmanager
async def _connect(
    stand_in: StandIn,
    *,
    ssl_context: ssl.SSLContext | None = None,
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    host, port = stand_in.address
    async with asyncio.timeout(TIMEOUT_S):
        reader, writer = await asyncio.open_connection(
            host,
            port,
            ssl=ssl_context,
            server_hostname=stand_in.name if ssl_context else None,
        )
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError, TimeoutError):
            async with asyncio.timeout(TIMEOUT_S):
                await writer.wait_closed()


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """Read one HTTP/1.1 response framed by content-length: (status, headers, body)."""
    async with asyncio.timeout(TIMEOUT_S):
        head = await reader.readuntil(b"\r\n\r\n")
        status_line, *fields = head.decode("ascii").split("\r\n")[:-2]
        headers = {}
        for field in fields:
            field_name, _, value = field.partition(":")
            headers[field_name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers["content-length"]))
    return int(status_line.split(" ")[1]), headers, body


def _get(path: str = "/", *, extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nhost: {EAST}\r\n{extra}\r\n".encode("ascii")


async def _request(stand_in: StandIn, request: bytes) -> tuple[int, dict[str, str], bytes]:
    async with _connect(stand_in) as (reader, writer):
        writer.write(request)
        return await _read_response(reader)


# --- DnsResponder --------------------------------------------------------------------------


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
async def test_a_query_gets_every_address_with_the_ttl(tcp: bool) -> None:
    records = {EAST: ["127.0.2.10", "127.0.2.11"], WEST: ["127.0.2.20"]}
    async with DnsResponder(records, ttl_s=7) as responder:
        answer = await _ask(responder, EAST, tcp=tcp)

    assert answer.rcode() == dns.rcode.NOERROR
    assert _addresses(answer) == ["127.0.2.10", "127.0.2.11"]
    assert [rrset.ttl for rrset in answer.answer] == [7]


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
async def test_names_match_case_insensitively_with_or_without_the_final_dot(tcp: bool) -> None:
    async with DnsResponder({"DynamoDB.US-East-1.amazonaws.com.": ["127.0.2.10"]}) as responder:
        answer = await _ask(responder, "dynamodb.us-east-1.AMAZONAWS.com", tcp=tcp)

    assert _addresses(answer) == ["127.0.2.10"]


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
async def test_aaaa_for_a_known_name_is_noerror_without_answer(tcp: bool) -> None:
    async with DnsResponder({EAST: ["127.0.2.10"]}) as responder:
        answer = await _ask(responder, EAST, "AAAA", tcp=tcp)

    assert answer.rcode() == dns.rcode.NOERROR
    assert answer.answer == []


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
async def test_unknown_name_is_nxdomain(tcp: bool) -> None:
    async with DnsResponder({EAST: ["127.0.2.10"]}) as responder:
        answer = await _ask(responder, "nosuch.example.invalid", tcp=tcp)

    assert answer.rcode() == dns.rcode.NXDOMAIN
    assert answer.answer == []


async def test_set_records_takes_effect_on_the_next_query() -> None:
    async with DnsResponder({EAST: ["127.0.2.10"]}) as responder:
        responder.set_records(WEST, ["127.0.2.20"])
        added = await _ask(responder, WEST)
        responder.set_records(EAST, ["127.0.2.11", "127.0.2.12"])
        moved = await _ask(responder, EAST, tcp=True)
        responder.set_records(EAST, [])
        removed = await _ask(responder, EAST)

    assert _addresses(added) == ["127.0.2.20"]
    assert _addresses(moved) == ["127.0.2.11", "127.0.2.12"]
    assert removed.rcode() == dns.rcode.NXDOMAIN


async def test_queries_are_logged_as_lowercase_name_and_type() -> None:
    async with DnsResponder({EAST: ["127.0.2.10"]}) as responder:
        await _ask(responder, EAST.upper())
        await _ask(responder, EAST, "AAAA", tcp=True)

    assert responder.queries == [(EAST, "A"), (EAST, "AAAA")]


async def test_malformed_packets_are_ignored_and_the_server_keeps_answering() -> None:
    async with DnsResponder({EAST: ["127.0.2.10"]}) as responder:
        host, port = responder.address
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as garbage:
            for packet in (b"", b"\x00", b"\xff" * 40, b"not a dns message at all"):
                garbage.sendto(packet, (host, port))
        # Over TCP, a bad frame is dropped but the connection goes on to the next query.
        reader, writer = await asyncio.open_connection(host, port)
        try:
            good = dns.message.make_query(EAST, "A").to_wire()
            writer.write(b"\x00\x05hello" + len(good).to_bytes(2, "big") + good)
            async with asyncio.timeout(TIMEOUT_S):
                size = int.from_bytes(await reader.readexactly(2), "big")
                over_tcp = dns.message.from_wire(await reader.readexactly(size))
        finally:
            writer.close()
            await writer.wait_closed()
        over_udp = await _ask(responder, EAST)

    assert _addresses(over_tcp) == ["127.0.2.10"]
    assert _addresses(over_udp) == ["127.0.2.10"]
    assert responder.queries == [(EAST, "A"), (EAST, "A")]


async def test_an_answer_too_big_for_udp_is_truncated_and_complete_over_tcp() -> None:
    many = [f"127.0.3.{i}" for i in range(1, 61)]  # 60 A records: over 512 bytes
    async with DnsResponder({EAST: many}) as responder:
        host, port = responder.address
        # No EDNS: the client can take only 512 bytes over UDP.
        query = dns.message.make_query(EAST, "A", use_edns=False)
        over_udp = await dns.asyncquery.udp(query, host, port=port, timeout=TIMEOUT_S)
        over_tcp = await _ask(responder, EAST, tcp=True)

    assert over_udp.flags & dns.flags.TC
    assert _addresses(over_tcp) == sorted(many)


def test_addresses_outside_loopback_are_refused() -> None:
    with pytest.raises(ValueError, match=r"127\.0\.0\.0/8"):
        DnsResponder({EAST: ["10.0.0.1"]})
    with pytest.raises(ValueError, match=r"127\.0\.0\.0/8"):
        DnsResponder(host="0.0.0.0")


# --- StandIn -------------------------------------------------------------------------------


async def test_healthy_answers_200_naming_the_endpoint() -> None:
    async with StandIn(EAST) as stand_in:
        status, headers, body = await _request(stand_in, _get())

    assert status == 200
    assert body == f"healthy: {EAST}\n".encode()
    assert headers["x-served-by"] == EAST
    assert headers["content-type"] == "text/plain"


async def test_keep_alive_answers_pipelined_requests_in_order_and_drops_bodies() -> None:
    chunked = (
        b"POST /chunked HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\ntrailer: x\r\n\r\n"
    )
    sized = b"PUT /sized HTTP/1.1\r\nContent-Length: 11\r\n\r\nhello world"
    requests = _get() + sized + chunked + _get("/last")
    async with StandIn(EAST) as stand_in, _connect(stand_in) as (reader, writer):
        # Byte by byte for the first copy, so every parser state sees a partial read.
        for index in range(len(requests)):
            writer.write(requests[index : index + 1])
            await writer.drain()
        writer.write(requests)
        statuses = [(await _read_response(reader))[0] for _ in range(8)]

    assert statuses == [200] * 8
    assert stand_in.requests_served[200] == 8


async def test_many_pipelined_requests_on_one_connection_are_all_answered() -> None:
    count = 2000
    async with StandIn(EAST) as stand_in, _connect(stand_in) as (reader, writer):
        writer.write(_get() * count)
        async with asyncio.timeout(TIMEOUT_S * 5):
            bodies = [(await _read_response(reader))[2] for _ in range(count)]

    assert set(bodies) == {f"healthy: {EAST}\n".encode()}
    assert stand_in.requests_served[200] == count


async def test_fail_503_answers_unhealthy_until_set_back_to_healthy() -> None:
    async with StandIn(EAST) as stand_in, _connect(stand_in) as (reader, writer):
        stand_in.set_mode(Mode.FAIL_503)
        writer.write(_get())
        failing = await _read_response(reader)
        stand_in.set_mode(Mode.HEALTHY)
        writer.write(_get())  # same keep-alive connection
        healthy = await _read_response(reader)

    assert failing[0] == 503
    assert failing[2] == f"unhealthy: {EAST}\n".encode()
    assert failing[1]["x-served-by"] == EAST
    assert healthy[0] == 200


async def test_requests_served_and_log_count_each_status() -> None:
    async with StandIn(EAST) as stand_in:
        await _request(stand_in, _get())
        stand_in.set_mode(Mode.FAIL_503)
        await _request(stand_in, _get())
        await _request(stand_in, _get())

        assert stand_in.requests_served == {200: 1, 503: 2}
        assert stand_in.log == [(200,), (503,), (503,)]
        stand_in.reset_counters()
        assert stand_in.requests_served[200] == 0
        assert stand_in.log == []


async def test_refuse_resets_open_connections_and_refuses_new_ones() -> None:
    async with StandIn(EAST) as stand_in:
        async with _connect(stand_in) as (reader, writer):
            writer.write(_get())
            await _read_response(reader)
            stand_in.set_mode(Mode.REFUSE)
            with pytest.raises(ConnectionResetError):
                async with asyncio.timeout(TIMEOUT_S):
                    await reader.read()
        host, port = stand_in.address
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection(host, port)


async def test_leaving_refuse_serves_again_on_the_same_port() -> None:
    async with StandIn(EAST) as stand_in:
        before = stand_in.address
        stand_in.set_mode(Mode.REFUSE)
        stand_in.set_mode(Mode.HEALTHY)
        status, _, _ = await _request(stand_in, _get())

    assert stand_in.address == before
    assert status == 200


async def test_starting_in_refuse_holds_the_port_and_refuses() -> None:
    async with StandIn(EAST, mode=Mode.REFUSE) as stand_in:
        host, port = stand_in.address
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection(host, port)
        stand_in.set_mode(Mode.FAIL_503)
        status, _, _ = await _request(stand_in, _get())

    assert status == 503


async def test_hang_accepts_but_never_answers() -> None:
    async with StandIn(EAST, mode=Mode.HANG) as stand_in, _connect(stand_in) as (reader, writer):
        writer.write(_get())
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await reader.read(1)
        # A hung connection stays silent even after recovery: answers must stay in order.
        stand_in.set_mode(Mode.HEALTHY)
        writer.write(_get())
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await reader.read(1)
        fresh = await _request(stand_in, _get())

    assert fresh[0] == 200
    assert stand_in.log == [(200,)]


async def test_malformed_request_gets_400_and_the_connection_closes() -> None:
    async with StandIn(EAST) as stand_in, _connect(stand_in) as (reader, writer):
        writer.write(b"NONSENSE\r\n\r\n")
        status, headers, _ = await _read_response(reader)
        async with asyncio.timeout(TIMEOUT_S):
            rest = await reader.read()

    assert status == 400
    assert headers["connection"] == "close"
    assert rest == b""


async def test_connection_close_and_http_1_0_end_the_connection_after_the_answer() -> None:
    async with StandIn(EAST) as stand_in:
        for request in (_get(extra="Connection: close\r\n"), b"GET / HTTP/1.0\r\n\r\n"):
            async with _connect(stand_in) as (reader, writer):
                writer.write(request)
                status, headers, _ = await _read_response(reader)
                async with asyncio.timeout(TIMEOUT_S):
                    assert await reader.read() == b""
            assert (status, headers["connection"]) == (200, "close")


async def test_head_gets_the_headers_without_a_body() -> None:
    async with StandIn(EAST) as stand_in, _connect(stand_in) as (reader, writer):
        writer.write(b"HEAD / HTTP/1.1\r\n\r\n" + _get())
        async with asyncio.timeout(TIMEOUT_S):
            head = await reader.readuntil(b"\r\n\r\n")
        status, _, body = await _read_response(reader)

    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert (status, body) == (200, f"healthy: {EAST}\n".encode())


async def test_tls_is_served_with_a_certificate_the_client_verifies() -> None:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(EAST).configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    async with (
        StandIn(EAST, ssl_context=server_context) as stand_in,
        _connect(stand_in, ssl_context=client_context) as (reader, writer),
    ):
        writer.write(_get())
        status, headers, _ = await _read_response(reader)

    assert stand_in.url.startswith("https://127.0.0.1:")
    assert (status, headers["x-served-by"]) == (200, EAST)


async def test_tls_client_trusting_another_ca_fails_and_the_server_keeps_serving() -> None:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(EAST).configure_cert(server_context)
    stranger = ssl.create_default_context()
    trustme.CA().configure_trust(stranger)
    trusting = ssl.create_default_context()
    ca.configure_trust(trusting)
    async with StandIn(EAST, ssl_context=server_context) as stand_in:
        with pytest.raises(ssl.SSLCertVerificationError):
            async with _connect(stand_in, ssl_context=stranger):
                pass
        async with _connect(stand_in, ssl_context=trusting) as (reader, writer):
            writer.write(_get())
            status, _, _ = await _read_response(reader)

    assert status == 200


async def test_refuse_resets_tls_connections_too() -> None:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(EAST).configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    async with StandIn(EAST, ssl_context=server_context) as stand_in:
        async with _connect(stand_in, ssl_context=client_context) as (reader, _writer):
            stand_in.set_mode(Mode.REFUSE)
            with pytest.raises(ConnectionResetError):
                async with asyncio.timeout(TIMEOUT_S):
                    await reader.read()
        stand_in.set_mode(Mode.HEALTHY)
        async with _connect(stand_in, ssl_context=client_context) as (reader, writer):
            writer.write(_get())
            status, _, _ = await _read_response(reader)

    assert status == 200


def test_stand_in_refuses_a_host_outside_loopback() -> None:
    with pytest.raises(ValueError, match=r"127\.0\.0\.0/8"):
        StandIn(EAST, host="192.0.2.1")
