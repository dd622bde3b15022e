"""The sandbox's fault hooks that ``bench/faults.py`` drives: a DNS responder that fails,
answers late or goes away, and a stand-in that resets in the middle of its answer."""

from __future__ import annotations

import asyncio
import time

import dns.asyncquery
import dns.exception
import dns.message
import dns.rcode
import pytest

from extproc.sandbox import DnsResponder, Mode, StandIn

EAST = "dynamodb.us-east-1.amazonaws.com"
TIMEOUT_S = 2.0


async def _ask(responder: DnsResponder, *, tcp: bool = False) -> dns.message.Message:
    host, port = responder.address
    query = dns.message.make_query(EAST, "A")
    if tcp:
        return await dns.asyncquery.tcp(query, host, port=port, timeout=TIMEOUT_S)
    return await dns.asyncquery.udp(query, host, port=port, timeout=TIMEOUT_S)


def _addresses(answer: dns.message.Message) -> list[str]:
    return sorted(rdata.to_text() for rrset in answer.answer for rdata in rrset)


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
async def test_servfail_answers_every_query_servfail_until_turned_off(tcp: bool) -> None:
    async with DnsResponder({EAST: ["127.0.2.10"]}) as responder:
        responder.servfail = True
        failed = await _ask(responder, tcp=tcp)
        responder.servfail = False
        answered = await _ask(responder, tcp=tcp)

    assert (failed.rcode(), failed.answer) == (dns.rcode.SERVFAIL, [])
    assert _addresses(answered) == ["127.0.2.10"]


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
async def test_delay_sends_every_answer_that_much_later(tcp: bool) -> None:
    async with DnsResponder({EAST: ["127.0.2.10"]}) as responder:
        responder.delay_s = 0.4
        started = time.monotonic()
        answer = await _ask(responder, tcp=tcp)
        elapsed = time.monotonic() - started

    assert _addresses(answer) == ["127.0.2.10"]
    assert 0.4 <= elapsed < TIMEOUT_S


async def _udp_ask(address: tuple[str, int], timeout_s: float) -> dns.message.Message:
    host, port = address
    query = dns.message.make_query(EAST, "A")
    return await dns.asyncquery.udp(query, host, port=port, timeout=timeout_s)


async def test_a_stopped_responder_is_silent_and_starts_again_on_the_same_port() -> None:
    responder = DnsResponder({EAST: ["127.0.2.10"]})
    await responder.start()
    address = responder.address
    await responder.stop()
    try:
        with pytest.raises((dns.exception.Timeout, OSError)):
            await _udp_ask(address, 0.3)
        await responder.start()
        answer = await _ask(responder)
    finally:
        await responder.stop()

    assert responder.address == address
    assert _addresses(answer) == ["127.0.2.10"]


async def _read_until_reset(reader: asyncio.StreamReader) -> bytes:
    """Everything received before the connection was reset; raises if it ends otherwise."""
    received = b""
    try:
        async with asyncio.timeout(TIMEOUT_S):
            while chunk := await reader.read(100):
                received += chunk
    except ConnectionResetError:
        return received
    raise AssertionError(f"the connection ended without a reset after {received!r}")


async def test_reset_sends_the_head_and_half_the_body_then_resets_the_connection() -> None:
    async with StandIn(EAST, mode=Mode.RESET) as stand_in:
        reader, writer = await asyncio.open_connection(*stand_in.address)
        try:
            writer.write(f"GET / HTTP/1.1\r\nhost: {EAST}\r\n\r\n".encode())
            received = await _read_until_reset(reader)
        finally:
            writer.close()
        stand_in.set_mode(Mode.HEALTHY)
        reader, writer = await asyncio.open_connection(*stand_in.address)
        try:
            writer.write(f"GET / HTTP/1.1\r\nhost: {EAST}\r\nconnection: close\r\n\r\n".encode())
            async with asyncio.timeout(TIMEOUT_S):
                healthy = await reader.read()
        finally:
            writer.close()

    whole = f"healthy: {EAST}\n".encode()
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert f"content-length: {len(whole)}".encode() in head
    assert body == whole[: len(whole) // 2]
    assert healthy.endswith(whole)
