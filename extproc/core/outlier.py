"""Outlier detection: consecutive-5xx ejection, exactly as Istio's sidecar Envoy does it.

Theory of operation
-------------------
This mirrors Envoy's ``source/common/upstream/outlier_detection_impl.cc`` for the one
detector Istio enables for ServiceEntry failover, consecutive 5xx (Istio turns success-rate
ejection off and leaves failure-percentage ejection at enforcing 0). Envoy splits the work
the same way: an immutable config (``OutlierDetection``), one monitor per host
(``HostMonitor`` ~ ``DetectorHostMonitorImpl``) and a detector that owns the monitors and
sweeps them (``OutlierDetector`` ~ ``DetectorImpl``).

Rules, units in seconds (``now`` is always an argument, on one monotonic scale):

1. Each attempt's outcome is a status code as Envoy's detector sees it (upstream status;
   503 for connect failure, reset or TLS failure; 504 for a timeout). 500..599 increments
   the host's ``consecutive_5xx``; any other code resets it (``putHttpResponseCode``).
2. Detection fires inline, on the attempt that makes the counter EQUAL to
   ``consecutive_5xx_errors``; 0 disables it. Counts past the threshold do not fire again
   until the counter is reset.
3. A detection for a host that is already ejected is ignored and its counter is left alone:
   errors during an ejection never extend it (``onConsecutiveErrorWorker``).
4. Otherwise the ejection gate (``ejectHost``): allowed iff
   ``100*(ejections_active+1)/total_hosts <= min(100, max_ejection_percent)``, or
   ``always_eject_one_host`` and nothing is ejected yet. Hosts of all priorities count. A
   refused ejection is an overflow (Envoy's ``ejections_overflow``). Either way the counter
   goes back to 0.
5. On ejection: ``num_ejections += 1``; ``backoff += 1`` while ``backoff*base < max + base``;
   the ejection lasts ``min(base*backoff, max)`` with ``max = max(300 s, base)``. Istio sets
   no jitter.
6. Sweeps run every ``interval`` from the detector's creation, ``t0 + k*interval``, not
   aligned to ejections (``onIntervalTimer``). A sweep first un-ejects every host whose
   ejection has lasted at least its duration (``checkHostForUneject``; counters reset,
   ``last_unejection_time`` set), then decays: each non-ejected host un-ejected at least one
   interval ago gets ``backoff -= 1`` (down to 0).

Envoy posts detections from workers to its main thread; here they apply at once, which is
what a single Envoy worker observes a moment later.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from extproc.core.policy import OutlierDetection

EJECT = "EJECT"
UNEJECT = "UNEJECT"
CONSECUTIVE_5XX = "CONSECUTIVE_5XX"


@dataclass(frozen=True, slots=True)
class OutlierEvent:
    """One ejection decision, named after Envoy's ``envoy.data.cluster.v3.OutlierDetectionEvent``.

    ``enforced`` is False for a detection the ``max_ejection_percent`` gate refused (an
    overflow), so operators can see why a failing host kept its traffic. An UNEJECT carries
    ``enforced=True`` (it ends an enforced ejection) and the type of the ejection it ends.
    """

    action: str  # "EJECT" or "UNEJECT"
    cluster_name: str
    upstream_url: str  # "ip:port"
    type: str  # "CONSECUTIVE_5XX"
    num_ejections: int
    enforced: bool
    time_s: float


@dataclass(slots=True)
class HostMonitor:
    """Outlier state of one host (Envoy's ``DetectorHostMonitorImpl``); mutable on purpose."""

    consecutive_5xx: int = 0
    ejected: bool = False
    num_ejections: int = 0  # lifetime count, never decays
    ejection_backoff: int = 0  # Envoy's ejectTimeBackoff
    last_ejection_time: float | None = None
    last_unejection_time: float | None = None


def ejection_duration_s(config: OutlierDetection, backoff: int) -> float:
    """How long an ejection lasts at ``backoff``: ``min(base*backoff, max_ejection_time)``.

    Mirrors the left side of ``DetectorImpl::checkHostForUneject`` (jitter 0, as Istio sets).
    """
    return min(config.base_ejection_time_s * backoff, config.max_ejection_time_s)


def ejection_allowed(
    ejections_active: int, total_hosts: int, max_ejection_percent: int, always_eject_one_host: bool
) -> bool:
    """Whether one more host may be ejected (``DetectorImpl::ejectHost``'s gate).

    Envoy compares ``100.0*(active+1)/total <= min(100, mep)`` in floating point; the integer
    cross-multiplication below is the same comparison without rounding.
    """
    limit = min(100, max_ejection_percent)
    if 100 * (ejections_active + 1) <= limit * total_hosts:
        return True
    return always_eject_one_host and ejections_active == 0


class OutlierDetector:
    """The per-cluster detector: host monitors, the ejection gate and the interval sweeps.

    Hosts are keyed by their ``ip:port`` string. Methods that change which hosts are ejected
    return True so the caller can recompute priority loads only then.
    """

    __slots__ = (
        "_cluster_name",
        "_config",
        "_ejections_active",
        "_events",
        "_monitors",
        "_next_sweep",
        "_overflow_total",
        "_t0",
    )

    def __init__(self, config: OutlierDetection, cluster_name: str, *, now: float) -> None:
        """Start the sweep clock at ``now`` (Envoy arms the interval timer at creation).

        Raises:
            ValueError: ``interval_s`` is not positive (the sweep clock would never advance).
        """
        if config.interval_s <= 0:
            raise ValueError(f"outlier detection interval must be positive: {config.interval_s}")
        self._config = config
        self._cluster_name = cluster_name
        self._t0 = now
        self._next_sweep = 1  # index k of the next sweep, due at t0 + k*interval
        self._monitors: dict[str, HostMonitor] = {}
        self._ejections_active = 0
        self._overflow_total = 0
        self._events: list[OutlierEvent] = []

    @property
    def config(self) -> OutlierDetection:
        """The outlier detection settings this detector applies."""
        return self._config

    @property
    def ejections_active(self) -> int:
        """Hosts ejected right now (Envoy gauge ``ejections_active``)."""
        return self._ejections_active

    @property
    def overflow_total(self) -> int:
        """Detections refused by ``max_ejection_percent`` (Envoy ``ejections_overflow``)."""
        return self._overflow_total

    @property
    def next_sweep_time(self) -> float:
        """When the next interval sweep is due."""
        return self._sweep_time(self._next_sweep)

    def monitor(self, address: str) -> HostMonitor | None:
        """The monitor of ``address``, or None when the host is not in the cluster."""
        return self._monitors.get(address)

    def is_ejected(self, address: str) -> bool:
        """Whether ``address`` is ejected (unknown hosts are not)."""
        monitor = self._monitors.get(address)
        return monitor is not None and monitor.ejected

    def ejection_time_left_s(self, address: str, now: float) -> float | None:
        """Time until the ejection of ``address`` may end (a later sweep decides), or None."""
        monitor = self._monitors.get(address)
        if monitor is None or not monitor.ejected or monitor.last_ejection_time is None:
            return None
        duration = ejection_duration_s(self._config, monitor.ejection_backoff)
        return max(0.0, duration - (now - monitor.last_ejection_time))

    def set_hosts(self, addresses: Iterable[str]) -> bool:
        """Make the monitored hosts exactly ``addresses``; kept hosts keep their state.

        Mirrors the member-update callback of ``DetectorImpl::initialize``: new hosts get a
        fresh monitor, removed hosts lose theirs (and stop counting as ejected).

        Returns:
            True when an ejected host was removed.
        """
        wanted = dict.fromkeys(addresses)
        removed_ejected = False
        for address in [a for a in self._monitors if a not in wanted]:
            if self._monitors.pop(address).ejected:
                self._ejections_active -= 1
                removed_ejected = True
        for address in wanted:
            if address not in self._monitors:
                self._monitors[address] = HostMonitor()
        return removed_ejected

    def put_http_response_code(self, address: str, code: int, now: float) -> bool:
        """Count one attempt's outcome for ``address``; eject inline when the threshold is hit.

        Mirrors ``DetectorHostMonitorImpl::putHttpResponseCode`` for the 5xx counter, followed
        by ``onConsecutiveErrorWorker`` and ``ejectHost``. The caller runs due sweeps first.

        Returns:
            True when the host was ejected.
        """
        monitor = self._monitors.get(address)
        if monitor is None:
            return False
        if not 500 <= code <= 599:
            monitor.consecutive_5xx = 0
            return False
        monitor.consecutive_5xx += 1
        if monitor.consecutive_5xx != self._config.consecutive_5xx_errors:
            # Equality, as Envoy: a threshold of 0 never fires, and counts past the threshold
            # (possible while ejected) wait for the reset at un-ejection.
            return False
        if monitor.ejected:
            # onConsecutiveErrorWorker: already ejected, ignore; the counter is NOT reset.
            return False
        ejected = self._eject(address, monitor, now)
        # onConsecutiveErrorWorker resets the firing counter whether or not ejectHost ejected.
        monitor.consecutive_5xx = 0
        return ejected

    def advance(self, now: float) -> bool:
        """Run, in order, every sweep due at ``t0 + k*interval <= now``.

        Sweeps that cannot change anything (no host ejected or decaying) are skipped in one
        step, so a long idle period costs O(hosts), not O(hosts * sweeps).

        Returns:
            True when some host was un-ejected.
        """
        changed = False
        while self._sweep_time(self._next_sweep) <= now:
            last_due = self._last_due_sweep(now)
            if not any(m.ejection_backoff > 0 and not m.ejected for m in self._monitors.values()):
                if self._ejections_active == 0:
                    # Nothing ejected and no backoff left to decay: the due sweeps are no-ops.
                    self._next_sweep = last_due + 1
                    break
                # Only ejected hosts matter: jump to the first sweep that can un-eject one.
                first = min(
                    self._first_uneject_sweep(m) for m in self._monitors.values() if m.ejected
                )
                if first > last_due:
                    self._next_sweep = last_due + 1
                    break
                self._next_sweep = max(self._next_sweep, first)
            changed |= self._sweep(self._sweep_time(self._next_sweep))
            self._next_sweep += 1
        return changed

    def drain_events(self) -> list[OutlierEvent]:
        """The events since the last drain, oldest first."""
        events, self._events = self._events, []
        return events

    def _eject(self, address: str, monitor: HostMonitor, now: float) -> bool:
        """Apply ``DetectorImpl::ejectHost`` (enforcing_consecutive_5xx is 100 under Istio)."""
        config = self._config
        if not ejection_allowed(
            self._ejections_active,
            len(self._monitors),
            config.max_ejection_percent,
            config.always_eject_one_host,
        ):
            self._overflow_total += 1
            self._events.append(self._event(EJECT, address, monitor, enforced=False, now=now))
            return False
        self._ejections_active += 1
        # DetectorHostMonitorImpl::eject
        monitor.ejected = True
        monitor.num_ejections += 1
        monitor.last_ejection_time = now
        # 1. Grow the backoff while the uncapped duration is below max + base, so it stops one
        #    step past the cap (envoyproxy/envoy#37602) and decay needs that many clean sweeps.
        base = config.base_ejection_time_s
        if monitor.ejection_backoff * base < config.max_ejection_time_s + base:
            monitor.ejection_backoff += 1
        self._events.append(self._event(EJECT, address, monitor, enforced=True, now=now))
        return True

    def _sweep(self, at: float) -> bool:
        """One run of ``DetectorImpl::onIntervalTimer`` at sweep time ``at``."""
        config = self._config
        changed = False
        # 1. checkHostForUneject: ejected long enough (duration <= elapsed) -> back in.
        for address, monitor in self._monitors.items():
            if not monitor.ejected or monitor.last_ejection_time is None:
                continue
            duration = ejection_duration_s(config, monitor.ejection_backoff)
            if duration <= at - monitor.last_ejection_time:
                self._uneject(address, monitor, at)
                changed = True
        # 2. Decay: a host un-ejected at least one interval ago earns one backoff step back.
        for monitor in self._monitors.values():
            if (
                not monitor.ejected
                and monitor.last_unejection_time is not None
                and at - monitor.last_unejection_time >= config.interval_s
                and monitor.ejection_backoff > 0
            ):
                monitor.ejection_backoff -= 1
        return changed

    def _uneject(self, address: str, monitor: HostMonitor, at: float) -> None:
        """Apply ``DetectorImpl::unejectHost``: back in, consecutive counters reset."""
        self._ejections_active -= 1
        monitor.ejected = False
        monitor.consecutive_5xx = 0
        monitor.last_unejection_time = at
        self._events.append(self._event(UNEJECT, address, monitor, enforced=True, now=at))

    def _event(
        self, action: str, address: str, monitor: HostMonitor, *, enforced: bool, now: float
    ) -> OutlierEvent:
        return OutlierEvent(
            action=action,
            cluster_name=self._cluster_name,
            upstream_url=address,
            type=CONSECUTIVE_5XX,
            num_ejections=monitor.num_ejections,
            enforced=enforced,
            time_s=now,
        )

    def _sweep_time(self, k: int) -> float:
        # Always computed this one way, so comparisons against it are consistent.
        return self._t0 + k * self._config.interval_s

    def _last_due_sweep(self, now: float) -> int:
        """The largest k with ``t0 + k*interval <= now`` (at least ``next_sweep - 1``)."""
        k = max(self._next_sweep - 1, math.floor((now - self._t0) / self._config.interval_s))
        while self._sweep_time(k + 1) <= now:
            k += 1
        while k >= self._next_sweep and self._sweep_time(k) > now:
            k -= 1
        return k

    def _first_uneject_sweep(self, monitor: HostMonitor) -> int:
        """The first sweep index, from the next one on, at which ``monitor`` is un-ejected."""
        assert monitor.last_ejection_time is not None
        duration = ejection_duration_s(self._config, monitor.ejection_backoff)
        since = monitor.last_ejection_time

        def done(k: int) -> bool:
            return duration <= self._sweep_time(k) - since

        k = max(
            self._next_sweep,
            math.ceil((since + duration - self._t0) / self._config.interval_s),
        )
        # Correct any floating-point slip of the estimate with the exact sweep predicate.
        while not done(k):
            k += 1
        while k > self._next_sweep and done(k - 1):
            k -= 1
        return k
