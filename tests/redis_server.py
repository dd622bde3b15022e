"""A real ``redis-server`` on loopback for the fleet's tests (``.ci/run`` installs it)."""

from __future__ import annotations

import asyncio
import shutil
import socket
from collections.abc import AsyncIterator

import pytest

from extproc.demo import free_port

#: Skip reason where the machine has no redis-server (CI always has one).
NO_REDIS = "needs redis-server (scripts/test installs it)"
needs_redis = pytest.mark.skipif(shutil.which("redis-server") is None, reason=NO_REDIS)


class RedisServer:
    """One throw-away Redis: no persistence, loopback only; it can be killed and restarted
    on the same port."""

    def __init__(self) -> None:
        self.port = free_port()
        self._process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self._process = await asyncio.create_subprocess_exec(
            *("redis-server", "--port", str(self.port), "--bind", "127.0.0.1"),
            *("--save", "", "--appendonly", "no"),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5.0
        while not _accepts(self.port):
            assert loop.time() < deadline, "redis-server did not start"
            await asyncio.sleep(0.02)

    async def kill(self) -> None:
        if self._process is not None:
            self._process.kill()
            await self._process.wait()
            self._process = None


def _accepts(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


async def redis_server() -> AsyncIterator[RedisServer]:
    """The body of a ``redis`` fixture: started, then killed at the end."""
    server = RedisServer()
    await server.start()
    try:
        yield server
    finally:
        await server.kill()
