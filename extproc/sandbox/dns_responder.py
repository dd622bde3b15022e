"""A real DNS server on loopback that answers for the names the sandbox pretends to be.

Envoy's DNS clusters resolve the external endpoints (``dynamodb.us-east-1.amazonaws.com``) through
c-ares. Pointing c-ares at this responder (``typed_dns_resolver_config``) lets the demo, the e2e
tests and the benchmark send those names to loopback stand-ins without touching ``/etc/hosts`` or
the machine's resolver, and lets a test move a name to another address while Envoy is running.

Theory of operation:

1. One UDP socket and one TCP listener share a loopback ``host:port``; c-ares asks over UDP and
   retries over TCP when an answer is truncated, so both must answer the same.
2. Every query is looked up in ``records`` (name -> IPv4 addresses) at the moment it arrives:
   ``A`` gets every address with ``ttl_s``; any other type for a known name gets NOERROR with no
   answer (NODATA, so an ``AAAA`` probe never fails the lookup); an unknown name gets NXDOMAIN.
3. Negative answers carry no SOA, so no resolver caches them (RFC 2308 §5): a name added with
   ``set_records`` resolves on the very next query.
4. Anything that does not parse is dropped: a stray packet must never take the server down.
5. Two faults a broken resolver shows, for the fault suite (``bench/faults.py``): ``servfail``
   answers every query SERVFAIL, and ``delay_s`` sends every answer that much later. Both apply
   from the next query; ``stop`` then ``start`` takes the server away and brings it back on
   the same port.

Only 127.0.0.0/8 addresses are accepted, for the listening host and for every record, so that a
misconfigured sandbox can never send traffic off the machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import socket
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import cast

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import structlog

logger = structlog.get_logger(__name__)

_LOOPBACK = ipaddress.IPv4Network("127.0.0.0/8")
# How many random ports to try before giving up on one free for both UDP and TCP.
_BIND_ATTEMPTS = 50
# A UDP answer without EDNS must fit in 512 bytes (RFC 1035 §4.2.1); larger ones are truncated
# with TC set, and the client retries over TCP.
_UDP_PLAIN_MAX_BYTES = 512
_TCP_MAX_BYTES = 65535
# Grace for TCP clients to see our FIN before stop() aborts the connection.
_CLOSE_GRACE_S = 1.0


def _loopback_ipv4(value: str, what: str) -> str:
    """Return ``value`` normalised, or raise if it is not an IPv4 address in 127.0.0.0/8.

    Raises:
        ValueError: ``value`` is not an IPv4 address, or not a loopback one.
    """
    try:
        address = ipaddress.IPv4Address(value)
    except ValueError:
        raise ValueError(f"{what}: {value!r} is not an IPv4 address") from None
    if address not in _LOOPBACK:
        raise ValueError(f"{what}: {value} is not in 127.0.0.0/8; the sandbox stays on loopback")
    return str(address)


def _to_name(name: str) -> dns.name.Name:
    """Parse a record name; ``Name`` compares case-insensitively, and the final dot is optional."""
    return dns.name.from_text(name)


class DnsResponder:
    """Answer A queries for a fixed, changeable set of names, over UDP and TCP on loopback.

    Use it as ``async with DnsResponder({"a.example": ["127.0.2.10"]}) as dns_server:`` and point
    the resolver at ``dns_server.address``.

    Args:
        records: Name -> IPv4 addresses in 127.0.0.0/8. Names are case-insensitive and the
            trailing dot is optional. A name with no addresses is unknown (NXDOMAIN).
        host: Loopback address to listen on.
        port: Port for both UDP and TCP; 0 picks one that is free for both.
        ttl_s: TTL of every answer, in seconds. Keep it short so that a resolver honouring
            TTLs (Envoy with ``respect_dns_ttl``) sees ``set_records`` soon.

    Attributes:
        servfail: Answer every query SERVFAIL (a resolver whose upstream is broken).
        delay_s: Send every answer this many seconds after the query (a slow resolver).

    Raises:
        ValueError: A record address or ``host`` is not in 127.0.0.0/8, or ``ttl_s`` is negative.
    """

    def __init__(
        self,
        records: Mapping[str, Sequence[str]] | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        ttl_s: int = 5,
    ) -> None:
        if ttl_s < 0:
            raise ValueError(f"ttl_s: {ttl_s} is negative")
        self.host = _loopback_ipv4(host, "host")
        self.ttl_s = ttl_s
        self.queries: list[tuple[str, str]] = []
        self.servfail = False
        self.delay_s = 0.0
        self._port = port
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._tcp_connections: set[asyncio.Transport] = set()
        # Set by each connection_lost; made in start(), as an Event belongs to one loop.
        self._tcp_connection_closed: asyncio.Event | None = None
        self._records: dict[dns.name.Name, tuple[dns.rdata.Rdata, ...]] = {}
        for name, ips in (records or {}).items():
            self.set_records(name, ips)

    @property
    def address(self) -> tuple[str, int]:
        """The ``(host, port)`` that both UDP and TCP listen on.

        Raises:
            RuntimeError: The port was 0 and the responder has not started, so there is no port
                yet.
        """
        if self._port == 0:
            raise RuntimeError("DnsResponder.address: not started, no port chosen yet")
        return (self.host, self._port)

    @property
    def records(self) -> dict[str, list[str]]:
        """A snapshot of the records, names without the trailing dot."""
        return {
            name.to_text(omit_final_dot=True): [rdata.to_text() for rdata in rdatas]
            for name, rdatas in self._records.items()
        }

    def set_records(self, name: str, ips: Sequence[str]) -> None:
        """Replace the addresses of ``name``; the next query sees them.

        Args:
            name: The name, case-insensitive, trailing dot optional.
            ips: IPv4 addresses in 127.0.0.0/8; empty removes the name (NXDOMAIN).

        Raises:
            TypeError: ``ips`` is a single string rather than a sequence of them.
            ValueError: An address is not an IPv4 address in 127.0.0.0/8.
        """
        if isinstance(ips, str):
            raise TypeError(f"records[{name!r}]: give a list of addresses, not the string {ips!r}")
        key = _to_name(name)
        rdatas = tuple(
            dns.rdata.from_text(
                dns.rdataclass.IN, dns.rdatatype.A, _loopback_ipv4(ip, f"records[{name!r}]")
            )
            for ip in ips
        )
        if rdatas:
            self._records[key] = rdatas
        else:
            self._records.pop(key, None)
        if self._udp is not None:
            logger.info(
                "dns_responder.set_records",
                name=key.to_text(omit_final_dot=True),
                addresses=[rdata.to_text() for rdata in rdatas],
            )

    async def start(self) -> None:
        """Bind UDP and TCP on the same port and start answering.

        Raises:
            RuntimeError: Already started.
            OSError: The given port is taken, or no port free for both protocols was found.
        """
        if self._udp is not None:
            raise RuntimeError("DnsResponder.start: already started")
        loop = asyncio.get_running_loop()
        self._tcp_connection_closed = asyncio.Event()
        udp_sock, tcp_sock = self._bind_pair()
        try:
            udp_transport, _ = await loop.create_datagram_endpoint(
                lambda: _UdpProtocol(self), sock=udp_sock
            )
        except BaseException:
            udp_sock.close()
            tcp_sock.close()
            raise
        try:
            self._tcp = await loop.create_server(lambda: _TcpProtocol(self), sock=tcp_sock)
        except BaseException:
            tcp_sock.close()
            udp_transport.close()
            raise
        self._udp = udp_transport
        self._port = tcp_sock.getsockname()[1]
        logger.info(
            "dns_responder.start", host=self.host, port=self._port, names=len(self._records)
        )

    async def stop(self) -> None:
        """Stop answering and close every socket; stopping twice is harmless."""
        udp, tcp = self._udp, self._tcp
        self._udp, self._tcp = None, None
        if udp is not None:
            udp.close()
        if tcp is not None:
            tcp.close()
            await self._close_tcp_connections()
            await tcp.wait_closed()
        if udp is not None:
            # Let the transport's close callback run so its socket is closed before we return.
            await asyncio.sleep(0)
            logger.info("dns_responder.stop", host=self.host, port=self._port)

    async def __aenter__(self) -> DnsResponder:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _close_tcp_connections(self) -> None:
        """Close TCP clients gracefully, then abort any still open after a grace period."""
        for transport in list(self._tcp_connections):
            transport.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_CLOSE_GRACE_S):
                await self._wait_no_tcp_connections()
        for transport in list(self._tcp_connections):
            transport.abort()
        await self._wait_no_tcp_connections()

    async def _wait_no_tcp_connections(self) -> None:
        event = self._tcp_connection_closed
        assert event is not None
        while self._tcp_connections:
            event.clear()
            await event.wait()

    def _bind_pair(self) -> tuple[socket.socket, socket.socket]:
        """Bind a UDP socket and a TCP socket to one port, retrying when the port is half taken.

        A port the kernel hands out for TCP may already be in use for UDP by someone else, so with
        port 0 we take TCP's choice and try UDP on it, a few times.
        """
        attempts = 1 if self._port else _BIND_ATTEMPTS
        for attempt in range(1, attempts + 1):
            tcp_sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            udp_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                # Only TCP gets SO_REUSEADDR (a restart must not wait out TIME_WAIT); on UDP it
                # would let two servers share the port silently.
                tcp_sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                tcp_sock.bind((self.host, self._port))
                udp_sock.bind((self.host, tcp_sock.getsockname()[1]))
            except OSError as exc:
                tcp_sock.close()
                udp_sock.close()
                if exc.errno != errno.EADDRINUSE or attempt == attempts:
                    raise
                continue
            return udp_sock, tcp_sock
        raise AssertionError("unreachable: the last attempt raises")  # pragma: no cover

    def answer(self, wire: bytes, *, max_size: int | None) -> bytes | None:
        """Build the wire answer to one query, or None to drop it.

        Args:
            wire: The query as received.
            max_size: Largest answer the transport allows; None means what the query's EDNS
                payload allows (UDP), with 512 bytes when it has no EDNS.

        Returns:
            The answer, truncated with TC set when it does not fit, or None when ``wire`` is not a
            query we can parse (it is dropped, as a resolver would time out and retry).
        """
        try:
            query = dns.message.from_wire(wire)
        except Exception as exc:  # any malformed packet, whatever dnspython makes of it
            logger.debug("dns_responder.malformed", size=len(wire), error=repr(exc))
            return None
        if query.flags & dns.flags.QR:
            return None  # a response, not a query: answering it could start a loop
        response = dns.message.make_response(query, recursion_available=True)
        response.flags |= dns.flags.AA
        if query.opcode() != dns.opcode.QUERY:
            response.set_rcode(dns.rcode.NOTIMP)
        elif len(query.question) != 1:
            response.set_rcode(dns.rcode.FORMERR)
        else:
            self._fill(query.question[0], response)
        if max_size is None:
            max_size = 0 if query.edns >= 0 else _UDP_PLAIN_MAX_BYTES
        return response.to_wire(max_size=max_size, prefer_truncation=True)

    def _fill(self, question: dns.rrset.RRset, response: dns.message.Message) -> None:
        """Put the answer to ``question`` into ``response``, and log the query."""
        rdtype_text = dns.rdatatype.to_text(question.rdtype)
        self.queries.append((question.name.to_text(omit_final_dot=True).lower(), rdtype_text))
        rdatas = self._records.get(question.name)
        if self.servfail:
            response.set_rcode(dns.rcode.SERVFAIL)
        elif question.rdclass != dns.rdataclass.IN:
            response.set_rcode(dns.rcode.REFUSED)
        elif not rdatas:
            response.set_rcode(dns.rcode.NXDOMAIN)
        elif question.rdtype == dns.rdatatype.A:
            # Owner name as asked, so a client that randomises case still matches it.
            response.answer.append(dns.rrset.from_rdata_list(question.name, self.ttl_s, rdatas))
        logger.debug(
            "dns_responder.query",
            name=question.name.to_text(),
            rdtype=rdtype_text,
            rcode=dns.rcode.to_text(response.rcode()),
            addresses=[rdata.to_text() for rdata in rdatas or ()]
            if question.rdtype == dns.rdatatype.A
            else [],
        )


class _UdpProtocol(asyncio.DatagramProtocol):
    """One datagram, one answer; nothing that arrives can stop the endpoint."""

    def __init__(self, responder: DnsResponder) -> None:
        self._responder = responder
        self._transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The selector loop's datagram transport does not subclass DatagramTransport.
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        try:
            wire = self._responder.answer(data, max_size=None)
            if wire is None:
                return
            if self._responder.delay_s > 0:
                loop = asyncio.get_running_loop()
                loop.call_later(self._responder.delay_s, self._send, wire, addr)
            else:
                self._send(wire, addr)
        except Exception:
            logger.exception("dns_responder.udp_error", peer=str(addr))

    def _send(self, wire: bytes, addr: tuple[str | object, int]) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.sendto(wire, addr)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable from a client that gave up; not our problem.
        logger.debug("dns_responder.udp_error_received", error=repr(exc))


class _TcpProtocol(asyncio.Protocol):
    """Length-prefixed queries (RFC 1035 §4.2.2), as many as the client sends on a connection."""

    def __init__(self, responder: DnsResponder) -> None:
        self._responder = responder
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._responder._tcp_connections.add(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is not None:
            self._responder._tcp_connections.discard(self._transport)
            if self._responder._tcp_connection_closed is not None:
                self._responder._tcp_connection_closed.set()

    def data_received(self, data: bytes) -> None:
        self._buf += data
        while len(self._buf) >= 2:
            size = int.from_bytes(self._buf[:2], "big")
            if len(self._buf) < 2 + size:
                return
            wire = bytes(self._buf[2 : 2 + size])
            del self._buf[: 2 + size]
            try:
                answer = self._responder.answer(wire, max_size=_TCP_MAX_BYTES)
            except Exception:
                logger.exception("dns_responder.tcp_error")
                continue
            if answer is None:
                continue
            if self._responder.delay_s > 0:
                loop = asyncio.get_running_loop()
                loop.call_later(self._responder.delay_s, self._send, answer)
            else:
                self._send(answer)

    def _send(self, answer: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(len(answer).to_bytes(2, "big") + answer)
