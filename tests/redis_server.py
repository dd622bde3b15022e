"""A real ``redis-server`` on loopback for the fleet's tests (``.ci/run`` installs it)."""

from __future__ import annotations

import asyncio
import shutil
import socket
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from extproc.demo import free_port

#: Skip reason where the machine has no redis-server (CI always has one).
NO_REDIS = "needs redis-server (scripts/test installs it)"
needs_redis = pytest.mark.skipif(shutil.which("redis-server") is None, reason=NO_REDIS)


@dataclass(frozen=True, slots=True)
class RedisTls:
    """A server certificate for 127.0.0.1 and the throw-away CA that signed it (trustme)."""

    ca: Path
    cert: Path
    key: Path

    @classmethod
    def make(cls, directory: Path) -> RedisTls:
        authority = trustme.CA()
        issued = authority.issue_cert("127.0.0.1")
        tls = cls(directory / "redis-ca.pem", directory / "redis.pem", directory / "redis.key")
        authority.cert_pem.write_to_path(str(tls.ca))
        issued.cert_chain_pems[0].write_to_path(str(tls.cert))
        issued.private_key_pem.write_to_path(str(tls.key))
        return tls


class RedisServer:
    """One throw-away Redis: no persistence, loopback only; it can be killed and restarted
    on the same port.

    With ``tls``, it speaks TLS only (``--port 0 --tls-port``); ``users`` are ACL rules, one
    ``--user`` directive each (``"fleet on >secret ~extproc:* &extproc:* +@all"``).
    """

    def __init__(self, *, tls: RedisTls | None = None, users: Sequence[str] = ()) -> None:
        self.port = free_port()
        self.tls = tls
        self._users = tuple(users)
        self._process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        """The URL of the default user (with the CA's file as a TLS query parameter)."""
        if self.tls is None:
            return f"redis://127.0.0.1:{self.port}/0"
        return f"rediss://127.0.0.1:{self.port}/0?ssl_ca_certs={self.tls.ca}"

    def _args(self) -> list[str]:
        args = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        if self.tls is None:
            args += ["--port", str(self.port)]
        else:
            args += ["--port", "0", "--tls-port", str(self.port)]
            args += ["--tls-cert-file", str(self.tls.cert), "--tls-key-file", str(self.tls.key)]
            args += ["--tls-ca-cert-file", str(self.tls.ca), "--tls-auth-clients", "no"]
        for rule in self._users:
            args += ["--user", *rule.split()]
        return args

    async def start(self) -> None:
        self._process = await asyncio.create_subprocess_exec(
            "redis-server",
            *self._args(),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5.0
        while not _accepts(self.port):
            assert self._process.returncode is None, "redis-server exited at start"
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


async def redis_server(
    *, tls: RedisTls | None = None, users: Sequence[str] = ()
) -> AsyncIterator[RedisServer]:
    """The body of a ``redis`` fixture: started, then killed at the end."""
    server = RedisServer(tls=tls, users=users)
    await server.start()
    try:
        yield server
    finally:
        await server.kill()
