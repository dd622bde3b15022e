"""``extproc up``: the service and Envoy together on this machine.

The service starts first (gRPC on an ephemeral loopback port, so nothing collides), then
Envoy with a bootstrap rendered for that port. ``wait_ready`` returns once Envoy's
listener is live. ``stop`` stops Envoy first (no new requests), then the service.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from extproc.core.policy import Locality, Policy, Workload
from extproc.errors import StartupError
from extproc.render.bootstrap import DataPath, RenderSettings, render_bootstrap
from extproc.server.app import ServiceApp, ServiceSettings
from extproc.server.envoy_process import EnvoyProcess


@dataclass(frozen=True, slots=True)
class StackSettings:
    """What ``extproc up`` takes from its flags."""

    listen: tuple[str, int]
    admin: tuple[str, int]
    dns_resolver: tuple[str, int] | None = None
    concurrency: int = 2
    envoy_log_level: str = "warning"
    message_timeout_ms: int = 1000
    data_path: DataPath = DataPath.LUA


async def _http_get(host: str, port: int, path: str) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n".encode())
        await writer.drain()
        data = await reader.read()
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head else 0
    return status, body.decode("latin-1")


class Stack:
    """The service plus one Envoy, started and stopped together."""

    def __init__(
        self,
        policy: Policy,
        workload: Workload | Locality,
        settings: StackSettings,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.app = ServiceApp(
            policy,
            workload,
            ServiceSettings(
                grpc_host="127.0.0.1",
                grpc_port=0,
                brain_port=0,
                admin_host=settings.admin[0],
                admin_port=settings.admin[1],
                dns_resolver=settings.dns_resolver,
            ),
            rng=rng,
        )
        self._policy = policy
        self._tmp = tempfile.TemporaryDirectory(prefix="extproc-up-")
        self.envoy: EnvoyProcess | None = None
        self.config_path = Path(self._tmp.name) / "envoy.yaml"

    async def start(self, timeout_s: float = 30.0) -> None:
        """Start the service, then Envoy; raise StartupError if either fails."""
        try:
            await self.app.start()
            bootstrap = render_bootstrap(
                self._policy,
                RenderSettings(
                    listen_host=self.settings.listen[0],
                    listen_port=self.settings.listen[1],
                    ext_proc_host="127.0.0.1",
                    ext_proc_port=self.app.grpc_port,
                    message_timeout_ms=self.settings.message_timeout_ms,
                    brain_port=self.app.brain_port,
                    data_path=self.settings.data_path,
                ),
            )
            self.config_path.write_text(yaml.safe_dump(bootstrap, sort_keys=False))
            self.envoy = EnvoyProcess(
                self.config_path,
                concurrency=self.settings.concurrency,
                log_level=self.settings.envoy_log_level,
            )
            await self.envoy.start(timeout_s)
            await self._wait_listener(timeout_s)
        except BaseException:
            await self.stop()
            raise

    async def _wait_listener(self, timeout_s: float) -> None:
        assert self.envoy is not None
        assert self.envoy.admin_address is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline:
            if self.envoy.returncode is not None:
                raise StartupError(f"envoy exited with code {self.envoy.returncode}")
            with contextlib.suppress(OSError):
                status, _ = await _http_get(*self.envoy.admin_address, "/ready")
                if status == 200:
                    host, port = self.settings.listen
                    _, writer = await asyncio.open_connection(host, port)
                    writer.close()
                    await writer.wait_closed()
                    return
            await asyncio.sleep(0.05)
        raise StartupError(
            "envoy did not open its listener on {}:{} within {:g}s".format(
                *self.settings.listen, timeout_s
            )
        )

    async def stop(self) -> None:
        """Stop Envoy, then the service; idempotent."""
        if self.envoy is not None:
            await self.envoy.stop()
        await self.app.stop()
        self._tmp.cleanup()

    async def __aenter__(self) -> Stack:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
