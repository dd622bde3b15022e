"""The service's small HTTP server holds no connection for a slow or endless client."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from extproc.server.http_server import HttpServer


class Echo(HttpServer):
    def respond(
        self, method: str, target: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, str, bytes]:
        return 200, "text/plain", body


@pytest.fixture
async def server() -> AsyncIterator[Echo]:
    echo = Echo()
    echo.request_timeout_s = 0.2
    echo.idle_timeout_s = 0.5
    await echo.start("127.0.0.1", 0)
    yield echo
    await echo.stop()


async def _closed_within(reader: asyncio.StreamReader, timeout_s: float) -> bool:
    try:
        return await asyncio.wait_for(reader.read(), timeout_s) == b""
    except TimeoutError:
        return False


async def test_a_request_that_stalls_after_its_first_line_is_closed(server: Echo) -> None:
    reader, writer = await asyncio.open_connection(*server.address)
    writer.write(b"POST /x HTTP/1.1\r\nhost: a\r\n")  # and then nothing
    await writer.drain()
    assert await _closed_within(reader, 2.0)
    writer.close()


async def test_an_idle_keep_alive_connection_is_closed_after_the_idle_timeout(
    server: Echo,
) -> None:
    reader, writer = await asyncio.open_connection(*server.address)
    writer.write(b"POST /x HTTP/1.1\r\nhost: a\r\ncontent-length: 2\r\n\r\nok")
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert await reader.readexactly(2) == b"ok"
    assert await _closed_within(reader, 2.0)
    writer.close()


async def test_endless_headers_end_the_connection(server: Echo) -> None:
    reader, writer = await asyncio.open_connection(*server.address)
    writer.write(b"GET / HTTP/1.1\r\n" + b"".join(b"x-%d: y\r\n" % i for i in range(500)))
    await writer.drain()
    assert await _closed_within(reader, 2.0)
    writer.close()


async def test_a_negative_content_length_ends_the_connection(server: Echo) -> None:
    reader, writer = await asyncio.open_connection(*server.address)
    writer.write(b"POST / HTTP/1.1\r\ncontent-length: -5\r\n\r\n")
    await writer.drain()
    assert await _closed_within(reader, 2.0)
    writer.close()
