"""The ``StandIn`` server: one fake external endpoint on a loopback port, switchable between faults.

What each mode answers is in ``answers.py``, how a connection reads and answers requests in
``http_connection.py``; this module owns the port: listening, refusing, listening again, TLS, and
an orderly stop.

Theory of operation:

1. The listening socket is ours, watched with ``loop.add_reader``; every accepted socket becomes an
   asyncio transport through ``loop.connect_accepted_socket`` (with TLS when ``ssl_context`` is
   set). Owning the accept loop makes every mode switch synchronous: ``set_mode`` returns with the
   port already refusing or already listening, so a test can act on the next line.
2. In REFUSE the port is held by a bound socket that does not listen: the kernel answers a SYN with
   RST (ECONNREFUSED), and no other socket can take the port while we are "down".
3. With ``record_requests`` and TLS, the context's ``sni_callback`` notes each ClientHello's SNI and
   leaves it on the TLS object, where the connection reads it for ``received``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import ipaddress
import socket
import ssl
from types import TracebackType

import structlog

from extproc.sandbox.answers import Mode, render_answers
from extproc.sandbox.http_connection import SNI_ATTRIBUTE, HttpConnection, Serving

logger = structlog.get_logger(__name__)

_LOOPBACK = ipaddress.IPv4Network("127.0.0.0/8")
_BACKLOG = 1024
# Accept at most this many connections per readiness callback, so a burst cannot starve others.
_ACCEPTS_PER_WAKEUP = 64
# After EMFILE and friends, stop accepting for this long instead of spinning on the error.
_ACCEPT_RETRY_S = 0.5
# A TLS client that connects and never completes the handshake is dropped after this.
_TLS_HANDSHAKE_TIMEOUT_S = 10.0
# Grace for clients (and TLS close_notify) before stop() aborts what is still open.
_CLOSE_GRACE_S = 1.0


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
        self._serving = Serving(
            render_answers(name), mode, log_limit=log_limit, record_requests=record_requests
        )
        self._sni_seen: collections.deque[str | None] = collections.deque(maxlen=log_limit)
        if record_requests and ssl_context is not None:
            ssl_context.sni_callback = self._remember_sni
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listener: socket.socket | None = None
        self._placeholder: socket.socket | None = None
        # Accepted sockets on their way to becoming connections (the TLS handshake, mostly).
        self._pending: set[asyncio.Task[object]] = set()

    @property
    def mode(self) -> Mode:
        """The current mode."""
        return self._serving.mode

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
        return collections.Counter(self._serving.served)

    @property
    def log(self) -> list[tuple[int]]:
        """A snapshot of the last ``log_limit`` answers, oldest first, as ``(status,)``."""
        return list(self._serving.log)

    @property
    def received(self) -> list[tuple[str | None, str]]:
        """``(SNI, Host)`` of each answered request, oldest first (``record_requests``).

        SNI is None for plain HTTP or a client that sent none; Host is "" when absent.
        """
        return list(self._serving.received or ())

    @property
    def sni_seen(self) -> list[str | None]:
        """The SNI of every TLS ClientHello, oldest first (``record_requests``)."""
        return list(self._sni_seen)

    def reset_counters(self) -> None:
        """Forget what was served, logged and received, so a phase starts at zero."""
        serving = self._serving
        serving.served.clear()
        serving.log.clear()
        self._sni_seen.clear()
        if serving.received is not None:
            serving.received.clear()

    def _remember_sni(
        self, ssl_object: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext
    ) -> None:
        """``sni_callback``: note the client's SNI, and keep it on its TLS object for
        ``received``."""
        self._sni_seen.append(server_name)
        setattr(ssl_object, SNI_ATTRIBUTE, server_name)

    def set_mode(self, mode: Mode) -> None:
        """Switch mode; the change is complete (port refusing or listening) when this returns.

        Requests already answered stay answered; the next request, or connection, sees the new
        mode. Entering REFUSE resets every open connection; leaving it listens on the same port.

        Call it from the event loop's thread (it touches the loop's sockets).

        Raises:
            OSError: Leaving REFUSE, the port could not be bound again (someone else took it);
                the stand-in stays in REFUSE.
        """
        previous = self._serving.mode
        if mode is previous:
            return
        if self._loop is not None and previous is Mode.REFUSE:
            self._recover()  # first, so that a failure leaves the stand-in in REFUSE
        self._serving.set_mode(mode)
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
        self._serving.connection_closed = asyncio.Event()
        sock = self._bind()
        self._port = sock.getsockname()[1]
        self._loop = loop
        if self._serving.mode is Mode.REFUSE:
            self._placeholder = sock
        else:
            self._listen(sock)
        logger.info(
            "stand_in.start",
            name=self.name,
            host=self.host,
            port=self._port,
            tls=self.ssl_context is not None,
            mode=self._serving.mode.value,
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
        for connection in list(self._serving.connections):
            connection.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_CLOSE_GRACE_S):
                await self._wait_no_connections()
        for connection in list(self._serving.connections):
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
        event = self._serving.connection_closed
        assert event is not None
        while self._serving.connections:
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
        for connection in list(self._serving.connections):
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

    def _new_connection(self) -> HttpConnection:
        return HttpConnection(self._serving)
