"""One stand-in client connection: HTTP/1.1 request framing, in-order answers, hang and reset.

Theory of operation:

1. The body of a request is read and dropped (``content-length`` or chunked), so keep-alive and
   pipelined requests stay in step. A request head or chunk-size line too long to be a real one,
   or a request we cannot frame, gets a 400 and the connection closes: after a framing error we
   cannot find the next request.
2. Once a request hangs, its connection stays silent for good: answering later requests on it
   would answer them out of order. RESET is a hang that ends in RST after ``_RESET_AFTER_S``,
   so that the client has read the partial answer before the reset arrives.
3. The connection reads what to answer from its stand-in's ``Serving`` on every request, and
   records there what it served; the stand-in switches modes by changing ``Serving``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import socket
import struct

from extproc.sandbox.answers import CLOSE, CONTINUE, KEEP_ALIVE, Answers, Mode, Reply

# A request head or a chunk-size line longer than this is an attack or a bug: answer 400 and close.
_MAX_HEAD_BYTES = 64 * 1024
_MAX_CHUNK_LINE_BYTES = 4096
# SO_LINGER on, timeout 0: close() sends RST instead of FIN, as a crashed server's kernel would.
_LINGER_RST = struct.pack("ii", 1, 0)
# In RESET, how long the partial answer stands before the RST.
_RESET_AFTER_S = 0.05

# Chunked request body states; 0 means "not in a chunked body".
_CHUNK_SIZE_LINE, _CHUNK_DATA, _CHUNK_TRAILER = 1, 2, 3

_HEX_DIGITS = b"0123456789abcdefABCDEF"

#: Where the stand-in's ``sni_callback`` leaves the client's SNI on the TLS object.
SNI_ATTRIBUTE = "stand_in_sni"


class Serving:
    """What a stand-in's connections read (the mode and its answer) and record (what they served).

    Args:
        answers: The stand-in's pre-rendered answers.
        mode: The mode at start.
        log_limit: How many entries ``log`` and ``received`` keep, oldest dropped first.
        record_requests: Keep ``(SNI, Host)`` of every answered request in ``received``.
    """

    __slots__ = (
        "answers",
        "connection_closed",
        "connections",
        "log",
        "mode",
        "received",
        "reply",
        "served",
    )

    def __init__(
        self, answers: Answers, mode: Mode, *, log_limit: int, record_requests: bool
    ) -> None:
        self.answers = answers
        self.mode = mode
        # What the connections answer with right now; None means stay silent (HANG, REFUSE).
        self.reply: Reply | None = answers.by_mode.get(mode)
        self.served: collections.Counter[int] = collections.Counter()
        self.log: collections.deque[tuple[int]] = collections.deque(maxlen=log_limit)
        self.received: collections.deque[tuple[str | None, str]] | None = (
            collections.deque(maxlen=log_limit) if record_requests else None
        )
        self.connections: set[HttpConnection] = set()
        # Set by each connection_lost; made by the stand-in's start(), as an Event belongs to
        # one loop.
        self.connection_closed: asyncio.Event | None = None

    def set_mode(self, mode: Mode) -> None:
        """Answer the next request as ``mode`` does."""
        self.mode = mode
        self.reply = self.answers.by_mode.get(mode)

    def record(self, reply: Reply) -> None:
        """Count and log one answered request."""
        self.served[reply.status] += 1
        self.log.append(reply.log_entry)


class HttpConnection(asyncio.Protocol):
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
        "_serving",
        "_sni",
        "_transport",
        "_variant",
    )

    def __init__(self, serving: Serving) -> None:
        self._serving = serving
        self._transport: asyncio.Transport | None = None
        self._buf = b""
        self._body_left = 0
        self._chunk_state = 0
        self._chunk_left = 0
        self._variant = KEEP_ALIVE
        self._hung = False
        self._resetting = False
        self._closing = False
        self._sni: str | None = None
        self._host = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        ssl_object = transport.get_extra_info("ssl_object")
        self._sni = getattr(ssl_object, SNI_ATTRIBUTE, None)
        self._serving.connections.add(self)
        if self._serving.mode is Mode.REFUSE:
            # Accepted before REFUSE, handshake finished after: reset it like the others.
            self.reset()

    def connection_lost(self, exc: Exception | None) -> None:
        self._serving.connections.discard(self)
        if self._serving.connection_closed is not None:
            self._serving.connection_closed.set()

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
        if self._serving.received is not None:
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
        if expect_continue and (chunked or content_length) and self._serving.reply is not None:
            out.append(CONTINUE)
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
        serving = self._serving
        reply = serving.reply
        if reply is None:
            if serving.mode is Mode.RESET:
                out.append(serving.answers.partial)
                self._resetting = True
            self._hung = True
            return False
        out.append(reply.wire[self._variant])
        serving.record(reply)
        if serving.received is not None:
            serving.received.append((self._sni, self._host))
        if self._variant & 1:
            self._closing = True
            return False
        return True

    def _answer_bad_request(self, out: list[bytes]) -> None:
        """Answer 400 and close: after a framing error we cannot find the next request."""
        reply = self._serving.answers.bad_request
        out.append(reply.wire[CLOSE])
        self._serving.record(reply)
        self._body_left = 0
        self._chunk_state = 0
        self._closing = True
