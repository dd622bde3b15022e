"""A small HTTP/1.1 server for the service's own endpoints (admin view, fast-path sync).

Keep-alive, ``content-length`` bodies only, one request at a time per connection: all the
admin view and Envoy's ``httpCall`` need. Subclasses answer in ``respond``.
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog

log = structlog.get_logger(__name__)

_MAX_BODY = 1 << 20
_MAX_HEADERS = 100
#: Envoy's connections to the sync endpoint carry a request every table TTL (100 ms) per
#: worker; an operator's curl is short. Idle longer than this, a connection is closed.
_IDLE_S = 300.0
#: From a request's first line to its last body byte.
_REQUEST_S = 10.0
_REASONS = {
    200: b"OK",
    403: b"Forbidden",
    404: b"Not Found",
    405: b"Method Not Allowed",
    500: b"Internal Server Error",
    503: b"Service Unavailable",
}


class HttpServer:
    """Serve ``respond`` over HTTP/1.1 on one address."""

    def __init__(self) -> None:
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.StreamWriter] = set()
        self.idle_timeout_s = _IDLE_S
        self.request_timeout_s = _REQUEST_S

    @property
    def address(self) -> tuple[str, int]:
        """The bound address (port 0 resolved); ("unix:PATH", 0) on a Unix socket."""
        assert self._server is not None
        name = self._server.sockets[0].getsockname()
        if isinstance(name, str):
            return f"unix:{name}", 0
        host, port = name[:2]
        return str(host), int(port)

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(self._serve, host, port)

    async def start_unix(self, path: str) -> None:
        """Listen on a Unix domain socket (``extproc up``'s private directory)."""
        self._server = await asyncio.start_unix_server(self._serve, path)

    async def stop(self) -> None:
        """Stop listening and close open connections; idempotent."""
        if self._server is not None:
            self._server.close()
            for writer in list(self._connections):
                writer.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None

    def respond(
        self, method: str, target: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, str, bytes]:
        """Answer one request: (status, content type, body)."""
        raise NotImplementedError

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._connections.add(writer)
        try:
            while True:
                # An idle keep-alive connection may wait; a started request must finish in
                # time, within bounded headers: a slow or endless client holds no slot.
                async with asyncio.timeout(self.idle_timeout_s):
                    request_line = await reader.readline()
                if not request_line:
                    return
                async with asyncio.timeout(self.request_timeout_s):
                    headers: dict[str, str] = {}
                    while True:
                        line = await reader.readline()
                        if line in (b"\r\n", b"\n", b""):
                            break
                        if len(headers) >= _MAX_HEADERS:
                            return
                        name, _, value = line.decode("latin-1").partition(":")
                        headers[name.strip().lower()] = value.strip()
                    length = int(headers.get("content-length", "0") or 0)
                    if not 0 <= length <= _MAX_BODY:
                        return
                    body = await reader.readexactly(length) if length else b""
                method, target = request_line.decode("latin-1").split()[:2]
                try:
                    status, content_type, payload = self.respond(method, target, headers, body)
                except Exception:
                    log.exception("http.request_error", target=target)
                    status, content_type, payload = 500, "text/plain", b"internal error\n"
                close = headers.get("connection", "").lower() == "close"
                writer.write(
                    b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n%s\r\n"
                    % (
                        status,
                        _REASONS.get(status, b"Error"),
                        content_type.encode(),
                        len(payload),
                        b"connection: close\r\n" if close else b"",
                    )
                    + payload
                )
                await writer.drain()
                if close:
                    return
        except (ConnectionError, asyncio.IncompleteReadError, ValueError, TimeoutError):
            return
        finally:
            self._connections.discard(writer)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
