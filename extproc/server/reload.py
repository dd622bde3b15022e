"""Live reload: watch the config, validate a change off the event loop, apply it whole.

Theory of operation:

1. **Watch the directory, not the file.** A Kubernetes ConfigMap volume updates by
   swapping its ``..data`` symlink (``kubernetes/kubernetes``
   ``pkg/volume/util/atomic_writer.go``), editors save by writing a new file and renaming
   it over the old one, and ``kubectl cp`` writes in place. ``fingerprint`` covers all
   three with plain ``stat`` calls: the config path and, for a directory, every entry in
   it (symlinks and what they point at: inode, mtime, size). ``ConfigReloader.run``
   compares it every ``poll_s`` (1 s by default); SIGHUP asks for a reload whatever the
   fingerprint says.
2. **Read only what has stopped changing.** A writer in place truncates first (``: >
   mydb.yaml``, ``kubectl cp``, many editors), so a look right after the truncate sees an
   empty or half-written file. Before reading, the fingerprint must be the same on two
   looks ``settle_s`` (250 ms) apart, and again right after the read, or the read is
   thrown away and tried again. After ``settle_timeout_s`` (5 s) of changes the reload is
   given up (``config.unsettled``); the next poll tries again. SIGHUP waits the same way.
3. **Validate off the loop, then swap at once.** The YAML is read, checked and compiled in
   a worker thread (``load_policy``), while requests keep being served. A config with any
   error is rejected as a whole: ``config.rejected`` lists every problem (file, object,
   field), ``extproc_config_reloads_total{result="rejected"}`` counts it, and nothing that
   serves changes. A good one goes to ``apply`` (``ServiceApp.apply_policy``, or
   ``Stack.reload`` for ``extproc up``), which swaps the whole table in one assignment and
   keeps the outlier state of every host that stays; ``config.reload`` says what changed.
   A reload that removes more than half of the services (all of them included) is applied
   but also logged as a warning, ``config.reload_removes``, naming them: it is more often a
   mistake than a plan. Of the new config's warnings only those the previous config did
   not have are logged, so a reload does not repeat what the operator has seen.
4. **One reload at a time.** Reloads run in order; a change seen during a reload is picked
   up by the next poll, because the fingerprint is taken before the files are read.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from extproc.core.change import PolicyChange
from extproc.core.policy import Policy
from extproc.errors import ConfigError, ExtprocError

if TYPE_CHECKING:
    from extproc.server.metrics import Metrics

log = structlog.get_logger(__name__)

#: What one directory entry looks like to the watcher (name, then lstat and stat fields).
Stamp = tuple[str, int, int, int, int, int]

DEFAULT_POLL_S = 1.0
#: Two looks at the files this far apart must agree before they are read.
DEFAULT_SETTLE_S = 0.25
#: How long a reload waits for the files to stop changing before it gives up.
DEFAULT_SETTLE_TIMEOUT_S = 5.0


def _stamp(path: Path, name: str) -> Stamp:
    """One entry: the link itself (lstat) and what it points at (stat); zeros if missing."""
    try:
        link = os.lstat(path)
    except OSError:
        return (name, 0, 0, 0, 0, 0)
    try:
        target = os.stat(path)
    except OSError:  # a dangling symlink
        return (name, link.st_ino, link.st_mtime_ns, 0, 0, 0)
    return (name, link.st_ino, link.st_mtime_ns, target.st_ino, target.st_mtime_ns, target.st_size)


def fingerprint(path: Path) -> tuple[Stamp, ...]:
    """What a config change changes: the path, and every entry of it when a directory."""
    stamps = [_stamp(path, "")]
    if path.is_dir():
        try:
            names = sorted(os.listdir(path))
        except OSError:
            names = []
        stamps += [_stamp(path / name, name) for name in names]
    return tuple(stamps)


class ConfigReloader:
    """Reload the config on a file change or on request (SIGHUP).

    Args:
        path: The config file or directory, as given to ``--config``.
        load: Reads and validates it; raises ``ConfigError`` with every problem. Runs in a
            worker thread.
        apply: Serves a validated policy. It raises ``ExtprocError`` to reject it (for
            example Envoy refused the rendered bootstrap), and then must have changed
            nothing.
        metrics: Where ``extproc_config_reloads_total`` is counted.
        poll_s: Seconds between two looks at the files; 0 turns polling off (SIGHUP only).
        initial: The fingerprint of the files the running policy was read from; taken now
            when not given.
        policy: The policy being served, whose warnings were already shown; a reload
            compares against it (what it removes, which warnings are new).
        settle_s: Seconds between the two looks that must agree before a read.
        settle_timeout_s: Give a reload up when the files still change after this long.
    """

    def __init__(
        self,
        path: Path,
        load: Callable[[Path], Policy],
        apply: Callable[[Policy], Awaitable[PolicyChange]],
        *,
        metrics: Metrics | None = None,
        poll_s: float = DEFAULT_POLL_S,
        initial: tuple[Stamp, ...] | None = None,
        policy: Policy | None = None,
        settle_s: float = DEFAULT_SETTLE_S,
        settle_timeout_s: float = DEFAULT_SETTLE_TIMEOUT_S,
    ) -> None:
        self._path = path
        self._load = load
        self._apply = apply
        self._metrics = metrics
        self._poll_s = poll_s
        self._seen = fingerprint(path) if initial is None else initial
        self._policy = policy
        self._settle_s = settle_s
        self._settle_timeout_s = settle_timeout_s
        self._requested = asyncio.Event()
        self._lock = asyncio.Lock()

    def request(self) -> None:
        """Reload as soon as possible, changed or not (the SIGHUP handler)."""
        self._requested.set()

    async def run(self) -> None:
        """Poll and serve reload requests until cancelled."""
        while True:
            timeout = self._poll_s if self._poll_s > 0 else None
            try:
                await asyncio.wait_for(self._requested.wait(), timeout)
                reason = "signal"
            except TimeoutError:
                reason = "file_change"
            if reason == "signal":
                self._requested.clear()
            elif await asyncio.to_thread(fingerprint, self._path) == self._seen:
                continue
            try:
                await self.reload(reason)
            except Exception:
                # A bug in applying must not end live reload; the next change tries again.
                log.exception("config.reload_failed", path=str(self._path), reason=reason)

    async def reload(self, reason: str = "request") -> bool:
        """Read, validate and apply the config once; False when it was rejected or kept
        changing."""
        async with self._lock:
            try:
                read = await self._read_settled()
                if read is None:
                    log.warning(
                        "config.unsettled",
                        path=str(self._path),
                        reason=reason,
                        detail=f"still changing after {self._settle_timeout_s:g}s; "
                        "not read, the last good config keeps serving; tried again at the "
                        "next change",
                    )
                    return False
                # Taken before the read was checked: a later write is seen at the next poll.
                self._seen, policy = read
                change = await self._apply(policy)
            except ConfigError as exc:
                self._rejected(reason, [str(problem) for problem in exc.problems])
                return False
            except ExtprocError as exc:
                self._rejected(reason, str(exc).splitlines() or [type(exc).__name__])
                return False
            if self._metrics is not None:
                self._metrics.count_config_reload(True)
            self._log_applied(policy, change, reason)
            self._policy = policy
            return True

    async def _look(self) -> tuple[Stamp, ...]:
        return await asyncio.to_thread(fingerprint, self._path)

    async def _read_settled(self) -> tuple[tuple[Stamp, ...], Policy] | None:
        """Load the files once two looks ``settle_s`` apart agree and the read did not
        overlap a write; None when they kept changing for ``settle_timeout_s``.

        Raises:
            ConfigError: the settled files are invalid.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._settle_timeout_s
        last = await self._look()
        while True:
            await asyncio.sleep(self._settle_s)
            now = await self._look()
            if now == last:
                error: ConfigError | None = None
                try:
                    policy = await asyncio.to_thread(self._load, self._path)
                except ConfigError as exc:
                    error = exc
                after = await self._look()
                if after == now:
                    if error is not None:
                        # Judged: a rejected file is reported once, not at every poll.
                        self._seen = now
                        raise error
                    return now, policy
                now = after  # a write overlapped the read: what was read may be torn
            if loop.time() >= deadline:
                return None
            last = now

    def _log_applied(self, policy: Policy, change: PolicyChange, reason: str) -> None:
        previous = self._policy
        shown = set(previous.warnings) if previous is not None else set()
        for warning in policy.warnings:
            if warning not in shown:
                log.warning(
                    "config.warning",
                    path=str(self._path),
                    warning=str(warning),
                    file=warning.file,
                    document=warning.document,
                    field=warning.path,
                )
        before = len(previous.services) if previous is not None else 0
        if change.removed and 2 * len(change.removed) > before:
            log.warning(
                "config.reload_removes",
                path=str(self._path),
                services_removed=list(change.removed),
                services_before=before,
                services_after=len(policy.services),
                detail="applied; requests for the removed hosts no longer match a "
                "ServiceEntry (check the config if this was not meant)",
            )
        log.info(
            "config.reload",
            path=str(self._path),
            reason=reason,
            unchanged=change.unchanged,
            services_added=list(change.added),
            services_removed=list(change.removed),
            services_changed=list(change.changed),
            envoy_restarted=change.envoy_restarted,
            warnings=len(policy.warnings),
        )

    def _rejected(self, reason: str, errors: list[str]) -> None:
        if self._metrics is not None:
            self._metrics.count_config_reload(False)
        log.error(
            "config.rejected",
            path=str(self._path),
            reason=reason,
            errors=errors,
            detail="the last good config keeps serving",
        )
