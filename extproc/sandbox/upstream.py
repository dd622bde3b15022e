"""A loopback HTTP/1.1 server that stands in for one external endpoint, and can be made to fail.

The demo, the e2e tests and the benchmark need upstreams that behave like a real service going
bad and coming back, in each of the ways Envoy's outlier detection tells apart:

- ``Mode.HEALTHY``: ``200 healthy: <name>``.
- ``Mode.FAIL_503``: ``503 unhealthy: <name>`` (gateway errors, ``consecutive_5xx``).
- ``Mode.FAIL_500``: ``500 unhealthy: <name>`` (a 5xx that is no gateway error).
- ``Mode.REFUSE``: nothing listens on the port, and open connections are reset (connect failures,
  ``consecutive_local_origin_failure``); leaving REFUSE listens on the SAME port again, because
  Envoy's endpoint (from DNS) names that port.
- ``Mode.HANG``: connections are accepted and requests read, but never answered (timeouts).
- ``Mode.RESET``: the status line, the headers and half the body of the healthy answer, then
  RST a moment later (a server that crashes mid-response).

Theory of operation:

1. The listening socket is ours, watched with ``loop.add_reader``; every accepted socket becomes an
   asyncio transport through ``loop.connect_accepted_socket`` (with TLS when ``ssl_context`` is
   set). Owning the accept loop makes every mode switch synchronous: ``set_mode`` returns with the
   port already refusing or already listening, so a test can act on the next line.
2. In REFUSE the port is held by a bound socket that does not listen: the kernel answers a SYN with
   RST (ECONNREFUSED), and no other socket can take the port while we are "down".
3. Every answer is bytes built once in ``__init__``; a request costs a header scan, one dict
   increment and a write. The body of a request is read and dropped (``content-length`` or
   chunked), so keep-alive and pipelined requests stay in step.
4. Once a request hangs, its connection stays silent for good: answering later requests on it
   would answer them out of order. RESET is a hang that ends in RST after ``_RESET_AFTER_S``,
   so that the client has read the partial answer before the reset arrives.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import enum
import errno
import ipaddress
import socket
import ssl
import struct
from dataclasses import dataclass
from types import TracebackType

import structlog

logger = structlog.get_logger(__name__)

_LOOPBACK = ipaddress.IPv4Network("127.0.0.0/8")
_BACKLOG = 1024
# Accept at most this many connections per readiness callback, so a burst cannot starve others.
_ACCEPTS_PER_WAKEUP = 64
# After EMFILE and friends, stop accepting for this long instead of spinning on the error.
_ACCEPT_RETRY_S = 0.5
# A request head or a chunk-size line longer than this is an attack or a bug: answer 400 and close.
_MAX_HEAD_BYTES = 64 * 1024
_MAX_CHUNK_LINE_BYTES = 4096
# A TLS client that connects and never completes the handshake is dropped after this.
_TLS_HANDSHAKE_TIMEOUT_S = 10.0
# Grace for clients (and TLS close_notify) before stop() aborts what is still open.
_CLOSE_GRACE_S = 1.0
# SO_LINGER on, timeout 0: close() sends RST instead of FIN, as a crashed server's kernel would.
_LINGER_RST = struct.pack("ii", 1, 0)
# In RESET, how long the partial answer stands before the RST.
_RESET_AFTER_S = 0.05

# The four wire variants of one answer, indexed by (is HEAD) * 2 + (close after).
_KEEP_ALIVE, _CLOSE, _HEAD_KEEP_ALIVE, _HEAD_CLOSE = range(4)

# Chunked request body states; 0 means "not in a chunked body".
_CHUNK_SIZE_LINE, _CHUNK_DATA, _CHUNK_TRAILER = 1, 2, 3

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_HEX_DIGITS = b"0123456789abcdefABCDEF"


class Mode(enum.Enum):
    """How a ``StandIn`` treats the next connection or request."""

    HEALTHY = "healthy"
    FAIL_503 = "fail_503"
    FAIL_500 = "fail_500"
    REFUSE = "refuse"
    HANG = "hang"
    RESET = "reset"


@dataclass(frozen=True, slots=True)
class _Reply:
    """One status, pre-rendered in its four wire forms."""

    status: int
    wire: tuple[bytes, bytes, bytes, bytes]
    log_entry: tuple[int]


def _render(status: int, reason: str, body: bytes, name: str) -> _Reply:
    """Render the status line, headers and body of one answer, once."""
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        "content-type: text/plain\r\n"
        f"content-length: {len(body)}\r\n"
        f"x-served-by: {name}\r\n"
    ).encode("ascii")
    keep_alive = head + b"\r\n"
    close = head + b"connection: close\r\n\r\n"
    return _Reply(
        status=status,
        wire=(keep_alive + body, close + body, keep_alive, close),
        log_entry=(status,),
    )


class StandIn:
    """One fake external endpoint on a loopback port, switchable between ways of failing.

    Use it as ``async with StandIn("dynamodb.us-east-1.amazonaws.com") as east:``, then
    ``east.set_mode(Mode.REFUSE)`` to take it down and ``east.set_mode(Mode.HEALTHY)`` to bring it
    back on the same port.

    Args:
        name: The endpoint it pretends to be; named in every body and in ``x-served-by``, so a test
            can tell which upstream served a request.
        host: Loopback address to listen on.
        port: Port to listen on; 0 picks a free one, read it back from ``address``.
        ssl_context: Server-side TLS context; None serves plain HTTP.
        mode: The mode at start.
        log_limit: How many statuses ``log`` keeps, oldest dropped first; a benchmark run must
            not grow memory without bound.
        record_requests: Keep the TLS SNI and the Host header of every answered request in
            ``received``, and the SNI of every TLS ClientHello, failed handshakes included, in
            ``sni_seen`` (tests of TLS origination); off, the request path stays lean. It
            takes the ``ssl_context``'s ``sni_callback``.
        loopback_only: Refuse a ``host`` outside 127.0.0.0/8. Only the stand-in process in a
            container (``python -m extproc.sandbox stand-in``, docker-compose) passes False, to
            listen on the container's network.

    Raises:
        ValueError: ``host`` is not an IPv4 address (in 127.0.0.0/8 unless ``loopback_only`` is
            False), or ``name`` cannot be sent in a header.
    """

    def __init__(
        self,
        name: str,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        ssl_context: ssl.SSLContext | None = None,
        mode: Mode = Mode.HEALTHY,
        log_limit: int = 10_000,
        loopback_only: bool = True,
        record_requests: bool = False,
    ) -> None:
        if not (name.isascii() and name.isprintable() and name.strip() == name and name):
            raise ValueError(f"name: {name!r} must be printable ASCII without outer spaces")
        try:
            address = ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(f"host: {host!r} is not an IPv4 address") from None
        if loopback_only and address not in _LOOPBACK:
            raise ValueError(f"host: {host} is not in 127.0.0.0/8; the sandbox stays on loopback")
        self.name = name
        self.host = str(address)
        self.ssl_context = ssl_context
        self._port = port
        self._mode = mode
        self._replies = {
            Mode.HEALTHY: _render(200, "OK", f"healthy: {name}\n".encode("ascii"), name),
            Mode.FAIL_503: _render(
                503, "Service Unavailable", f"unhealthy: {name}\n".encode("ascii"), name
            ),
            Mode.FAIL_500: _render(
                500, "Internal Server Error", f"unhealthy: {name}\n".encode("ascii"), name
            ),
        }
        self._bad_request = _render(400, "Bad Request", b"bad request\n", name)
        # RESET's partial answer: the healthy head (keep-alive form) and half its body.
        healthy = self._replies[Mode.HEALTHY].wire[_KEEP_ALIVE]
        body_size = len(f"healthy: {name}\n")
        self._partial = healthy[: len(healthy) - body_size + body_size // 2]
        # What the connections answer with right now; None means stay silent (HANG, REFUSE).
        self._reply: _Reply | None = self._replies.get(mode)
        self._served: collections.Counter[int] = collections.Counter()
        self._log: collections.deque[tuple[int]] = collections.deque(maxlen=log_limit)
        self._received: collections.deque[tuple[str | None, str]] | None = (
            collections.deque(maxlen=log_limit) if record_requests else None
        )
        self._sni_seen: collections.deque[str | None] = collections.deque(maxlen=log_limit)
        if record_requests and ssl_context is not None:
            ssl_context.sni_callback = self._remember_sni
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listener: socket.socket | None = None
        self._placeholder: socket.socket | None = None
        # Accepted sockets on their way to becoming connections (the TLS handshake, mostly).
        self._pending: set[asyncio.Task[object]] = set()
        self._connections: set[_HttpConnection] = set()
        # Set by each connection_lost; made in start(), as an Event belongs to one loop.
        self._connection_closed: asyncio.Event | None = None

    @property
    def mode(self) -> Mode:
        """The current mode."""
        return self._mode

    @property
    def address(self) -> tuple[str, int]:
        """The ``(host, port)`` served; the port stays the same across REFUSE and back.

        Raises:
            RuntimeError: The port was 0 and the stand-in has not started, so there is no port yet.
        """
        if self._port == 0:
            raise RuntimeError(f"StandIn {self.name}: not started, no port chosen yet")
        return (self.host, self._port)

    @property
    def url(self) -> str:
        """``http://host:port`` or ``https://host:port``, for clients and logs."""
        host, port = self.address
        return f"{'https' if self.ssl_context else 'http'}://{host}:{port}"

    @property
    def requests_served(self) -> collections.Counter[int]:
        """A snapshot of how many requests were answered, by status code (missing -> 0)."""
        return collections.Counter(self._served)

    @property
    def log(self) -> list[tuple[int]]:
        """A snapshot of the last ``log_limit`` answers, oldest first, as ``(status,)``."""
        return list(self._log)

    @property
    def received(self) -> list[tuple[str | None, str]]:
        """``(SNI, Host)`` of each answered request, oldest first (``record_requests``).

        SNI is None for plain HTTP or a client that sent none; Host is "" when absent.
        """
        return list(self._received or ())

    @property
    def sni_seen(self) -> list[str | None]:
        """The SNI of every TLS ClientHello, oldest first (``record_requests``)."""
        return list(self._sni_seen)

    def reset_counters(self) -> None:
        """Forget what was served, logged and received, so a phase starts at zero."""
        self._served.clear()
        self._log.clear()
        self._sni_seen.clear()
        if self._received is not None:
            self._received.clear()

    def _remember_sni(
        self, ssl_object: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext
    ) -> None:
        """``sni_callback``: note the client's SNI, and keep it on its TLS object for
        ``received``."""
        self._sni_seen.append(server_name)
        ssl_object.stand_in_sni = server_name  # type: ignore[attr-defined]

    def set_mode(self, mode: Mode) -> None:
        """Switch mode; the change is complete (port refusing or listening) when this returns.

        Requests already answered stay answered; the next request, or connection, sees the new
        mode. Entering REFUSE resets every open connection; leaving it listens on the same port.

        Call it from the event loop's thread (it touches the loop's sockets).

        Raises:
            OSError: Leaving REFUSE, the port could not be bound again (someone else took it);
                the stand-in stays in REFUSE.
        """
        previous = self._mode
        if mode is previous:
            return
        if self._loop is not None and previous is Mode.REFUSE:
            self._recover()  # first, so that a failure leaves the stand-in in REFUSE
        self._mode = mode
        self._reply = self._replies.get(mode)
        if self._loop is not None and mode is Mode.REFUSE:
            self._refuse()
        logger.info(
            "stand_in.mode",
            name=self.name,
            port=self._port,
            mode=mode.value,
            previous=previous.value,
        )

    async def start(self) -> None:
        """Bind the port and start serving in the current mode.

        Raises:
            RuntimeError: Already started.
            OSError: The port is taken.
        """
        if self._loop is not None:
            raise RuntimeError(f"StandIn {self.name}: already started")
        loop = asyncio.get_running_loop()
        self._connection_closed = asyncio.Event()
        sock = self._bind()
        self._port = sock.getsockname()[1]
        self._loop = loop
        if self._mode is Mode.REFUSE:
            self._placeholder = sock
        else:
            self._listen(sock)
        logger.info(
            "stand_in.start",
            name=self.name,
            host=self.host,
            port=self._port,
            tls=self.ssl_context is not None,
            mode=self._mode.value,
        )

    async def stop(self) -> None:
        """Stop listening and close every connection; stopping twice is harmless."""
        if self._loop is None:
            return
        self._unlisten()
        if self._placeholder is not None:
            self._placeholder.close()
            self._placeholder = None
        if self._pending:
            # 1. Let handshakes in flight finish; they become connections and are closed below.
            await asyncio.wait(set(self._pending), timeout=_CLOSE_GRACE_S)
            # 2. Still pending means stuck in the handshake: cancelling aborts the transport,
            #    which closes the socket. (Every task has run its first step by now, so each
            #    socket belongs to a transport; closing it ourselves could close a reused fd.)
            pending = list(self._pending)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        for connection in list(self._connections):
            connection.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_CLOSE_GRACE_S):
                await self._wait_no_connections()
        for connection in list(self._connections):
            connection.abort()
        await self._wait_no_connections()
        self._loop = None
        logger.info("stand_in.stop", name=self.name, port=self._port)

    async def __aenter__(self) -> StandIn:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _wait_no_connections(self) -> None:
        event = self._connection_closed
        assert event is not None
        while self._connections:
            event.clear()
            await event.wait()

    def _bind(self) -> socket.socket:
        """A non-blocking TCP socket bound to our address, not yet listening."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            # Rebinding after REFUSE must not wait for connections in TIME_WAIT.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self._port))
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    def _listen(self, sock: socket.socket) -> None:
        """Start listening on ``sock``; connections queue in the backlog until the loop runs."""
        assert self._loop is not None
        sock.listen(_BACKLOG)
        self._listener = sock
        self._loop.add_reader(sock.fileno(), self._accept, sock)

    def _unlisten(self) -> None:
        """Close the listening socket; the kernel resets connections still in its backlog."""
        if self._listener is None:
            return
        assert self._loop is not None
        self._loop.remove_reader(self._listener.fileno())
        self._listener.close()
        self._listener = None

    def _refuse(self) -> None:
        """Close the port, reset every connection, and hold the port with a non-listening socket."""
        self._unlisten()
        # Sockets still in the TLS handshake are reset by connection_made once it completes;
        # cancelling them here could close them gracefully instead.
        for connection in list(self._connections):
            connection.reset()
        try:
            self._placeholder = self._bind()
        except OSError as exc:
            # The port stays refusing either way; leaving REFUSE will try to bind it again.
            logger.warning(
                "stand_in.port_not_held", name=self.name, port=self._port, error=str(exc)
            )

    def _recover(self) -> None:
        """Listen again on the port REFUSE held (or, if it could not hold it, bind it anew)."""
        sock = self._placeholder or self._bind()
        try:
            self._listen(sock)
        except BaseException:
            if sock is not self._placeholder:
                sock.close()
            raise
        self._placeholder = None

    def _accept(self, listener: socket.socket) -> None:
        """Accept what the backlog holds and hand each socket to asyncio as a transport."""
        assert self._loop is not None
        for _ in range(_ACCEPTS_PER_WAKEUP):
            try:
                sock, _peer = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue  # the client gave up while in the backlog
            except OSError as exc:
                if exc.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    raise
                logger.warning("stand_in.accept_paused", name=self.name, error=str(exc))
                self._loop.remove_reader(listener.fileno())
                self._loop.call_later(_ACCEPT_RETRY_S, self._resume_accept, listener)
                return
            task: asyncio.Task[object] = self._loop.create_task(
                self._loop.connect_accepted_socket(
                    self._new_connection,
                    sock,
                    ssl=self.ssl_context,
                    ssl_handshake_timeout=_TLS_HANDSHAKE_TIMEOUT_S if self.ssl_context else None,
                )
            )
            self._pending.add(task)
            task.add_done_callback(self._accepted)

    def _resume_accept(self, listener: socket.socket) -> None:
        if self._loop is not None and self._listener is listener:
            self._loop.add_reader(listener.fileno(), self._accept, listener)

    def _accepted(self, task: asyncio.Task[object]) -> None:
        """Forget a finished hand-over; a failed one has already closed its transport."""
        self._pending.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            logger.debug("stand_in.handshake_failed", name=self.name, error=repr(exc))

    def _new_connection(self) -> _HttpConnection:
        return _HttpConnection(self)


class _HttpConnection(asyncio.Protocol):
    """One client connection: parse request heads, drop bodies, answer in order."""

    __slots__ = (
        "_body_left",
        "_buf",
        "_chunk_left",
        "_chunk_state",
        "_closing",
        "_host",
        "_hung",
        "_resetting",
        "_sni",
        "_stand_in",
        "_transport",
        "_variant",
    )

    def __init__(self, stand_in: StandIn) -> None:
        self._stand_in = stand_in
        self._transport: asyncio.Transport | None = None
        self._buf = b""
        self._body_left = 0
        self._chunk_state = 0
        self._chunk_left = 0
        self._variant = _KEEP_ALIVE
        self._hung = False
        self._resetting = False
        self._closing = False
        self._sni: str | None = None
        self._host = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        ssl_object = transport.get_extra_info("ssl_object")
        self._sni = getattr(ssl_object, "stand_in_sni", None)
        self._stand_in._connections.add(self)
        if self._stand_in._mode is Mode.REFUSE:
            # Accepted before REFUSE, handshake finished after: reset it like the others.
            self.reset()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stand_in._connections.discard(self)
        if self._stand_in._connection_closed is not None:
            self._stand_in._connection_closed.set()

    def pause_writing(self) -> None:
        # A client that pipelines without reading gets no more reads until it drains.
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        if self._transport is not None:
            self._transport.resume_reading()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def reset(self) -> None:
        """Abort with RST, as a server whose process died would."""
        if self._transport is None:
            return
        sock = self._transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
        self._transport.abort()

    def data_received(self, data: bytes) -> None:
        if self._hung or self._closing:
            return  # a hung connection swallows everything; a closing one is done
        buf = self._buf + data if self._buf else data
        self._buf = b""
        pos = 0
        size = len(buf)
        out: list[bytes] = []
        while True:
            if self._body_left:
                # 1. Drop what we have of a content-length body; answer once it is all here.
                take = min(self._body_left, size - pos)
                self._body_left -= take
                pos += take
                if self._body_left or not self._answer(out):
                    break
            elif self._chunk_state:
                # 2. Drop chunks; a negative position means a malformed chunk.
                pos = self._skip_chunks(buf, pos)
                if pos < 0:
                    self._answer_bad_request(out)
                    break
                if self._chunk_state or not self._answer(out):
                    break
            else:
                # 3. The next request head: blank lines before it are allowed (RFC 9112 §2.2).
                while buf.startswith(b"\r\n", pos):
                    pos += 2
                end = buf.find(b"\r\n\r\n", pos)
                if end < 0:
                    if size - pos > _MAX_HEAD_BYTES:
                        self._answer_bad_request(out)
                    break
                ok = self._read_head(buf[pos:end], out)
                pos = end + 4
                if not ok:
                    self._answer_bad_request(out)
                    break
                if not (self._body_left or self._chunk_state) and not self._answer(out):
                    break
        if pos < size and not (self._hung or self._closing):
            self._buf = buf[pos:]
        transport = self._transport
        assert transport is not None
        if out:
            transport.write(out[0] if len(out) == 1 else b"".join(out))
        if self._closing:
            transport.close()
        elif self._resetting:
            self._resetting = False
            asyncio.get_running_loop().call_later(_RESET_AFTER_S, self.reset)

    def _read_head(self, head: bytes, out: list[bytes]) -> bool:
        """Take what matters from a request head; False if it is not a request we can frame."""
        line_end = head.find(b"\r\n")
        request_line = head if line_end < 0 else head[:line_end]
        parts = request_line.split(b" ")
        if len(parts) != 3:
            return False
        method, _target, version = parts
        if version == b"HTTP/1.1":
            close = False
        elif version == b"HTTP/1.0":
            close = True  # no keep-alive negotiation for 1.0 clients: one request, then close
        else:
            return False
        content_length = 0
        chunked = False
        expect_continue = False
        if line_end >= 0:
            fields = head[line_end + 2 :].lower()
            # Fast path: a plain GET names none of the headers that change framing.
            if (
                b"content-length" in fields
                or b"transfer-encoding" in fields
                or b"connection" in fields
                or b"expect" in fields
            ):
                for field in fields.split(b"\r\n"):
                    field_name, colon, value = field.partition(b":")
                    if not colon:
                        return False
                    value = value.strip()
                    if field_name == b"content-length":
                        if not value.isdigit() or (content_length and int(value) != content_length):
                            return False
                        content_length = int(value)
                    elif field_name == b"transfer-encoding":
                        # Only chunked as the last coding tells us where the body ends.
                        if value.rsplit(b",", 1)[-1].strip() != b"chunked":
                            return False
                        chunked = True
                    elif field_name == b"connection":
                        if b"close" in (token.strip() for token in value.split(b",")):
                            close = True
                    elif field_name == b"expect" and value == b"100-continue":
                        expect_continue = True
        if self._stand_in._received is not None:
            self._host = ""
            for field in head[line_end + 2 :].split(b"\r\n") if line_end >= 0 else ():
                field_name, _, value = field.partition(b":")
                if field_name.strip().lower() == b"host":
                    self._host = value.strip().decode("latin-1")
        self._variant = (2 if method == b"HEAD" else 0) + (1 if close else 0)
        if chunked:
            self._chunk_state = _CHUNK_SIZE_LINE  # chunked wins over content-length (RFC 9112)
        else:
            self._body_left = content_length
        if expect_continue and (chunked or content_length) and self._stand_in._reply is not None:
            out.append(_CONTINUE)
        return True

    def _skip_chunks(self, buf: bytes, pos: int) -> int:
        """Drop chunked body bytes from ``pos``; return where we stopped, or -1 if malformed.

        Leaves ``_chunk_state`` at 0 when the body, trailers included, is complete; otherwise the
        returned position is the start of an incomplete line, kept for the next read.
        """
        size = len(buf)
        while self._chunk_state:
            if self._chunk_state == _CHUNK_DATA:
                take = min(self._chunk_left, size - pos)
                self._chunk_left -= take
                pos += take
                if self._chunk_left:
                    return pos
                self._chunk_state = _CHUNK_SIZE_LINE
                continue
            line_end = buf.find(b"\r\n", pos)
            if line_end < 0:
                return -1 if size - pos > _MAX_CHUNK_LINE_BYTES else pos
            line = buf[pos:line_end]
            pos = line_end + 2
            if self._chunk_state == _CHUNK_TRAILER:
                if not line:
                    self._chunk_state = 0  # the empty line after the trailers ends the body
                continue
            size_text = line.split(b";", 1)[0].strip()
            if not size_text or size_text.strip(_HEX_DIGITS):
                return -1
            chunk_size = int(size_text, 16)
            if chunk_size == 0:
                self._chunk_state = _CHUNK_TRAILER
            else:
                self._chunk_state = _CHUNK_DATA
                self._chunk_left = chunk_size + 2  # the data and its CRLF
        return pos

    def _answer(self, out: list[bytes]) -> bool:
        """Queue the answer to the request just read; False if the connection must stop here."""
        stand_in = self._stand_in
        reply = stand_in._reply
        if reply is None:
            if stand_in._mode is Mode.RESET:
                out.append(stand_in._partial)
                self._resetting = True
            self._hung = True
            return False
        out.append(reply.wire[self._variant])
        stand_in._served[reply.status] += 1
        stand_in._log.append(reply.log_entry)
        if stand_in._received is not None:
            stand_in._received.append((self._sni, self._host))
        if self._variant & 1:
            self._closing = True
            return False
        return True

    def _answer_bad_request(self, out: list[bytes]) -> None:
        """Answer 400 and close: after a framing error we cannot find the next request."""
        reply = self._stand_in._bad_request
        out.append(reply.wire[_CLOSE])
        self._stand_in._served[reply.status] += 1
        self._stand_in._log.append(reply.log_entry)
        self._body_left = 0
        self._chunk_state = 0
        self._closing = True
