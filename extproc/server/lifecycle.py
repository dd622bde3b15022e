"""The one owner of a run: signals, SIGHUP, the reload task and ordered shutdown.

``extproc up`` (a ``Stack``), ``extproc serve`` (a ``ServiceApp``) and ``extproc demo`` run
through ``Lifecycle``, as uvicorn's ``Server.serve`` owns its whole run:

1. Signal handlers go in before anything starts: SIGINT and SIGTERM stop, SIGHUP asks the
   config watcher for a reload. A signal during start-up cancels the start, and the target
   stops what had already started (``Stack.start`` and ``ServiceApp.start`` clean up).
2. Start the target; say where it serves (``on_started``); start the config watcher.
3. Run until a signal, or until the target ends on its own (``up``'s Envoy exited).
4. Shut down in order: the watcher first (no reload during shutdown), then the target
   (``Stack.stop``: Envoy, then the service; ``ServiceApp.stop``: health NOT_SERVING,
   in-flight streams within the grace period, then timers, DNS and the HTTP servers).
5. Take the signal handlers out again.

The targets own what runs (their start-up and shutdown order); this module owns when.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import signal
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, Protocol

import structlog

from extproc.core.change import PolicyChange
from extproc.core.policy import Policy
from extproc.errors import ConfigError, Problem
from extproc.istio import load_policy, locality_warnings
from extproc.server.metrics import Metrics
from extproc.server.reload import ConfigReloader, Stamp
from extproc.settings import Settings

log = structlog.get_logger(__name__)

#: What ``run`` returns when the target ended on its own rather than by a signal.
TARGET_ENDED = 1
#: What ``run_main`` returns when a signal cancelled the main coroutine (128 + SIGINT).
INTERRUPTED = 130


class Target(Protocol):
    """What a lifecycle runs: ``Stack`` and ``ServiceApp``."""

    async def start(self) -> None: ...

    async def wait(self) -> int:
        """Return when the target ends on its own, with its exit code."""
        ...

    async def stop(self) -> None: ...


def read_config(path: Path, settings: Settings, *, with_workload: bool = True) -> Policy:
    """Load a config as the settings say; the workload's locality warnings join its warnings.

    Raises:
        ConfigError: the config's errors, and with ``strict`` its warnings too.
    """
    policy = load_policy(
        path,
        always_eject_one_host=not settings.strict_max_ejection_percent,
        strict=settings.strict,
    )
    extra = locality_warnings(policy, settings.workload) if with_workload else []
    if extra and settings.strict:
        raise ConfigError([Problem(source_name(path), "", "", text) for text in extra])
    if extra:
        # About --locality, not a place in the file: no file, document or path to name.
        about_flag = tuple(Problem("", "", "", text) for text in extra)
        policy = dataclasses.replace(policy, warnings=(*policy.warnings, *about_flag))
    return policy


def source_name(path: Path) -> str:
    """How a config path is named in messages (``-`` is standard input)."""
    return "<stdin>" if str(path) == "-" else str(path)


class Lifecycle:
    """Signals, the config watcher and ordered shutdown around one target."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._stop = asyncio.Event()
        self._reloader: ConfigReloader | None = None
        #: The target's exit code when it ended on its own (``run`` returned TARGET_ENDED).
        self.exit_code: int | None = None

    def stop(self) -> None:
        """Ask the run to end, as SIGTERM does."""
        self._stop.set()

    async def run(
        self,
        target: Target,
        policy: Policy,
        *,
        apply: Callable[[Policy], Awaitable[PolicyChange]],
        metrics: Metrics,
        stamp: tuple[Stamp, ...] = (),
        on_started: Callable[[], None] | None = None,
    ) -> int:
        """Start ``target``, watch the config (``apply`` serves a new policy), stop in order.

        Returns:
            0 when a signal (or ``stop``) ended the run, ``TARGET_ENDED`` when the target
            ended on its own.

        Raises:
            StartupError: the target did not start (what had started is stopped).
        """
        with self._signals(reload=True):
            self._reloader = self._watcher(policy, apply, metrics, stamp)
            # A signal during start-up stops what already runs (start cleans up on cancel).
            starting = asyncio.ensure_future(target.start())
            await _first(starting, self._stop.wait())
            if not starting.done() or starting.cancelled():
                return 0
            starting.result()  # raises StartupError when a part did not start
            if on_started is not None:
                on_started()
            watching = asyncio.ensure_future(self._reloader.run())
            try:
                ended = asyncio.ensure_future(target.wait())
                await _first(ended, self._stop.wait())
            finally:
                watching.cancel()
                await asyncio.gather(watching, return_exceptions=True)
                await target.stop()
            if self._stop.is_set():
                return 0
            self.exit_code = ended.result()
            return TARGET_ENDED

    async def run_main(self, main: Coroutine[Any, Any, int]) -> int:
        """Run ``main`` (``demo``) until it returns, or cancel it on SIGINT or SIGTERM.

        ``main`` owns its targets (``async with Stack``), so cancelling it stops them in
        order.
        """
        with self._signals(reload=False):
            task = asyncio.ensure_future(main)
            await _first(task, self._stop.wait())
            if task.cancelled():
                return INTERRUPTED
            return task.result()

    def _watcher(
        self,
        policy: Policy,
        apply: Callable[[Policy], Awaitable[PolicyChange]],
        metrics: Metrics,
        stamp: tuple[Stamp, ...],
    ) -> ConfigReloader:
        settings = self.settings
        if settings.config is None:
            raise ValueError("a lifecycle that reloads needs settings.config")
        return ConfigReloader(
            settings.config,
            lambda path: read_config(path, settings),
            apply,
            metrics=metrics,
            poll_s=settings.watch_interval_s,
            initial=stamp,
            policy=policy,
        )

    @contextlib.contextmanager
    def _signals(self, *, reload: bool) -> Iterator[None]:
        loop = asyncio.get_running_loop()
        stops = (signal.SIGINT, signal.SIGTERM)
        for sig in stops:
            loop.add_signal_handler(sig, self._stop.set)
        if reload:
            loop.add_signal_handler(signal.SIGHUP, self._reload)
        try:
            yield
        finally:
            for sig in (*stops, signal.SIGHUP) if reload else stops:
                loop.remove_signal_handler(sig)

    def _reload(self) -> None:
        if self._reloader is not None:
            self._reloader.request()


async def _first(*awaitables: Awaitable[Any]) -> None:
    """Wait until the first of ``awaitables`` finishes; cancel the rest."""
    tasks = [asyncio.ensure_future(a) for a in awaitables]
    _, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
