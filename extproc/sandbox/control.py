"""A stand-in as a process of its own, with an HTTP control channel to make it fail and recover.

docker-compose runs one such process per region (``python -m extproc.sandbox stand-in``), and
``tests/e2e/test_compose.py`` runs the same processes on loopback. The control port answers:

- ``GET /healthz``: 200 while the process runs, whatever the mode: a stand-in that fails on
  purpose is still a healthy container (compose's health check must not restart or block it).
- ``GET /mode``: the name, the mode and the requests served by status, as JSON.
- ``POST /mode/{healthy,fail_503,refuse,hang}``: switch the mode. The answer is sent once the
  switch is complete (``StandIn.set_mode``), so the next request to the stand-in already sees it.

The control channel is a separate port because in REFUSE the stand-in's own port refuses every
connection. One request per connection, request bodies ignored: curl and ``set_mode`` are its
only clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass
from typing import Any

import structlog

from extproc.sandbox.answers import Mode
from extproc.sandbox.stand_in import StandIn

logger = structlog.get_logger(__name__)

# A control request is one short line and a few headers; anything bigger is not ours.
_MAX_REQUEST_BYTES = 16 * 1024
_MAX_BODY_BYTES = 64 * 1024
_REQUEST_TIMEOUT_S = 5.0
_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 500: "Internal Server Error"}


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` -> ``(host, port)``.

    Raises:
        ValueError: ``text`` is not HOST:PORT with a port in 0..65535.
    """
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{text!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


@dataclass(frozen=True, slots=True)
class ControlReply:
    """What the control port answered; ``status`` 0 means it could not be reached."""

    status: int
    body: dict[str, Any]


class ControlServer:
    """The HTTP control channel of one ``StandIn``.

    Args:
        stand_in: The stand-in it switches; started and stopped by the caller.
    """

    def __init__(self, stand_in: StandIn) -> None:
        self.stand_in = stand_in
        self._server: asyncio.Server | None = None

    @property
    def address(self) -> tuple[str, int]:
        """The bound ``(host, port)`` (port 0 resolved)."""
        assert self._server is not None, "ControlServer: not started"
        host, port = self._server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    async def start(self, host: str, port: int) -> None:
        """Listen on ``host:port``; 0 picks a free port.

        Raises:
            OSError: The port is taken.
        """
        self._server = await asyncio.start_server(self._serve, host, port, limit=_MAX_REQUEST_BYTES)

    async def stop(self) -> None:
        """Stop listening; idempotent."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
            with contextlib.suppress(Exception):
                await server.wait_closed()

    def state(self) -> dict[str, Any]:
        """The stand-in's name, mode and requests served by status."""
        stand_in = self.stand_in
        return {
            "name": stand_in.name,
            "mode": stand_in.mode.value,
            "requests_served": {
                str(status): count for status, count in sorted(stand_in.requests_served.items())
            },
        }

    def respond(self, method: str, target: str) -> tuple[int, dict[str, Any]]:
        """Answer one control request: ``(status, JSON body)``."""
        path = target.split("?", 1)[0]
        if path == "/healthz":
            return (200, {"status": "ok"}) if method in ("GET", "HEAD") else _not_allowed("GET")
        if path == "/mode":
            return (200, self.state()) if method in ("GET", "HEAD") else _not_allowed("GET")
        if path.startswith("/mode/"):
            if method != "POST":
                return _not_allowed("POST")
            name = path.removeprefix("/mode/")
            try:
                mode = Mode(name)
            except ValueError:
                return 404, {"error": f"no mode {name!r}", "modes": [m.value for m in Mode]}
            previous = self.stand_in.mode
            try:
                self.stand_in.set_mode(mode)
            except OSError as exc:  # leaving REFUSE, someone else took the port
                return 500, {"error": str(exc), **self.state()}
            return 200, {**self.state(), "previous": previous.value}
        return 404, {"error": f"no such path {path!r}"}

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(_REQUEST_TIMEOUT_S):
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, target, _version = lines[0].split(" ", 2)
                length = 0
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value.strip())
                if not 0 <= length <= _MAX_BODY_BYTES:
                    return
                await reader.readexactly(length)
            status, body = self.respond(method, target)
            payload = (json.dumps(body) + "\n").encode()
            writer.write(
                (
                    f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
                    "content-type: application/json\r\n"
                    f"content-length: {len(payload)}\r\n"
                    "connection: close\r\n\r\n"
                ).encode("ascii")
                + (payload if method != "HEAD" else b"")
            )
            await writer.drain()
        except (
            ConnectionError,
            TimeoutError,
            ValueError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
        ):
            return  # a client that went away or did not speak HTTP: nothing to answer
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


def _not_allowed(allowed: str) -> tuple[int, dict[str, Any]]:
    return 405, {"error": f"use {allowed}"}


async def run_stand_in(
    name: str,
    listen: tuple[str, int],
    control: tuple[str, int],
    stop: asyncio.Event,
    *,
    mode: Mode = Mode.HEALTHY,
    loopback_only: bool = True,
) -> None:
    """Serve a stand-in and its control channel until ``stop`` is set.

    Args:
        name: The endpoint it pretends to be (``dynamodb.us-east-1.amazonaws.com``).
        listen: Where the stand-in serves HTTP.
        control: Where the control channel listens.
        stop: Set it to stop both.
        mode: The mode at start.
        loopback_only: False lets ``listen`` be a non-loopback address (in a container).
    """
    stand_in = StandIn(name, listen[0], listen[1], mode=mode, loopback_only=loopback_only)
    server = ControlServer(stand_in)
    async with stand_in:
        await server.start(*control)
        try:
            logger.info(
                "stand_in.ready",
                name=name,
                listen="{}:{}".format(*stand_in.address),
                control="{}:{}".format(*server.address),
                mode=stand_in.mode.value,
            )
            await stop.wait()
        finally:
            await server.stop()


async def set_mode(control: tuple[str, int], mode: Mode, *, timeout_s: float = 5.0) -> ControlReply:
    """Ask a stand-in's control channel to switch to ``mode`` (``POST /mode/{mode}``)."""
    return await request(control, "POST", f"/mode/{mode.value}", timeout_s=timeout_s)


async def request(
    control: tuple[str, int], method: str, path: str, *, timeout_s: float = 5.0
) -> ControlReply:
    """Send one request to a control channel and read its JSON answer."""
    host = control[0]
    wire = (
        f"{method} {path} HTTP/1.1\r\nhost: {host}\r\ncontent-length: 0\r\n"
        "connection: close\r\n\r\n"
    ).encode("ascii")
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(*control)
            try:
                writer.write(wire)
                await writer.drain()
                data = await reader.read()
            finally:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
    except (OSError, TimeoutError) as exc:
        return ControlReply(0, {"error": f"cannot reach {host}:{control[1]}: {exc}"})
    head, _, payload = data.partition(b"\r\n\r\n")
    parts = head.split(b" ", 2)
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    try:
        body = json.loads(payload) if payload.strip() else {}
    except ValueError:
        body = {"error": payload.decode("utf-8", "replace")}
    return ControlReply(status, body if isinstance(body, dict) else {"value": body})
