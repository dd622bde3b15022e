"""The outlier detector: per-host monitors, the ejection gate and the interval sweeps.

Theory of operation
-------------------
This mirrors Envoy's ``source/common/upstream/outlier_detection_impl.cc`` for the detectors
Istio's ``outlierDetection`` can enable: consecutive 5xx, consecutive gateway failure and
consecutive local-origin failure (Istio turns success-rate ejection off and leaves
failure-percentage ejection at enforcing 0). Envoy splits the work the same way: an
immutable config (``policy.OutlierDetection``, Envoy's ``DetectorConfig``), one monitor per
host (``outlier.HostMonitor`` ~ ``DetectorHostMonitorImpl``) and a detector that owns the monitors
and sweeps them (``OutlierDetector`` ~ ``DetectorImpl``).

Rules, units in seconds (``now`` is always an argument, on one monotonic scale). Rules 1-3
(how an attempt ends, error codes, non-split codes) are in ``outlier.py``.

4. Split mode (``putResultWithLocalExternalSplit``): every attempt that connected first
   resets ``consecutive_local_origin_failure`` (``localOriginNoFailure``); failures then
   increment it, answers go to rule 5 only. So a timeout or reset after connecting leaves
   the counter at 1, and only threshold 1 ejects on it (verified on Envoy 1.40).
5. ``putHttpResponseCode``: a 5xx first feeds the gateway counter (502/503/504 increment
   ``consecutive_gateway_failure``, any other 5xx resets it), then increments
   ``consecutive_5xx``; any other code resets both.
6. A detector fires inline, on the report that makes its counter EQUAL to its threshold; 0
   disables it and counts past the threshold do not fire again until a reset. When both
   fire on one answer, the gateway detection is handled first.
7. A detection for a host that is already ejected is ignored and its counter is left alone:
   errors during an ejection never extend it (``onConsecutiveErrorWorker``).
8. Otherwise the ejection gate (``ejectHost``), one for all three detectors: allowed iff
   ``100*(ejections_active+1)/total_hosts <= min(100, max_ejection_percent)``, or
   ``always_eject_one_host`` and nothing is ejected yet. Hosts of all priorities count. A
   refused ejection is an overflow (``ejections_overflow``). An allowed one is enforced
   unless the detector's enforcing is 0 (Istio's unset ``consecutiveGatewayErrors``: Envoy
   still detects 5 gateway errors, and only logs them). Either way the firing counter goes
   back to 0.
9. On ejection: ``num_ejections += 1``; ``backoff += 1`` while ``backoff*base < max + base``;
   the ejection lasts ``min(base*backoff, max)`` with ``max = max(300 s, base)``. Istio sets
   no jitter.
10. Sweeps run every ``interval`` from the detector's creation, ``t0 + k*interval``, not
    aligned to ejections (``onIntervalTimer``). A sweep first un-ejects every host whose
    ejection has lasted at least its duration (``checkHostForUneject``; all three counters
    reset, ``last_unejection_time`` set), then decays: each non-ejected host un-ejected at
    least one interval ago gets ``backoff -= 1`` (down to 0).

Envoy posts detections from workers to its main thread; here they apply at once, which is
what a single Envoy worker observes a moment later.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Iterable

from extproc.core.outlier import (
    AttemptKind,
    AttemptResult,
    HostMonitor,
    OutlierAction,
    OutlierEjectionType,
    OutlierEvent,
    http_response_code,
)
from extproc.core.policy import OutlierDetection

__all__ = ["FleetVerdict", "OutlierDetector", "ejection_allowed", "ejection_duration_s"]


def _below(count: int, threshold: int) -> int:
    """``count`` kept under an enabled ``threshold``, so the next error can reach it."""
    return min(count, threshold - 1) if threshold > 0 else count


def ejection_duration_s(config: OutlierDetection, backoff: int) -> float:
    """How long an ejection lasts at ``backoff``: ``min(base*backoff, max_ejection_time)``.

    Mirrors the left side of ``DetectorImpl::checkHostForUneject`` (jitter 0, as Istio sets).
    """
    return min(config.base_ejection_time_s * backoff, config.max_ejection_time_s)


class FleetVerdict(enum.Enum):
    """What a fleet ejection did here (``OutlierDetector.eject_for_fleet``)."""

    EJECTED = "ejected"
    NOT_OURS = "not_ours"  # no such host in this cluster
    ALREADY_EJECTED = "already_ejected"
    CONTRADICTED = "contradicted"  # this proxy's own clean answer is newer
    REFUSED = "refused"  # maxEjectionPercent's gate
    OVER = "over"  # its end is already past on this clock


def _fleet_end(monitor: HostMonitor) -> float | None:
    """The end of a fleet ejection (the sender's), or None for an ejection of this proxy's."""
    if monitor.ejection_type is OutlierEjectionType.FLEET:
        return monitor.fleet_until
    return None


def _ejection_over(config: OutlierDetection, monitor: HostMonitor, at: float) -> bool:
    """Whether an ejection has lasted its duration at sweep time ``at`` (checkHostForUneject,
    in Envoy's form: duration <= at - ejected); a fleet ejection lasts until its end."""
    if (end := _fleet_end(monitor)) is not None:
        return end <= at
    assert monitor.last_ejection_time is not None
    duration = ejection_duration_s(config, monitor.ejection_backoff)
    return duration <= at - monitor.last_ejection_time


def _ejection_end(config: OutlierDetection, monitor: HostMonitor) -> float:
    """When an ejection ends, on the detector's clock (``_ejection_over``'s time)."""
    if (end := _fleet_end(monitor)) is not None:
        return end
    assert monitor.last_ejection_time is not None
    return monitor.last_ejection_time + ejection_duration_s(config, monitor.ejection_backoff)


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
            ValueError: ``interval_s`` is not positive (the sweep clock would never advance),
                or ``enforcing_consecutive_gateway_failure`` is neither 0 nor 100.
        """
        if config.interval_s <= 0:
            raise ValueError(f"outlier detection interval must be positive: {config.interval_s}")
        if config.enforcing_consecutive_gateway_failure not in (0, 100):
            # Istio only emits 0 or 100; a percentage roll would need randomness here.
            raise ValueError(
                "enforcing_consecutive_gateway_failure must be 0 or 100: "
                f"{config.enforcing_consecutive_gateway_failure}"
            )
        self._config = config
        self._cluster_name = cluster_name
        self._t0 = now
        self._next_sweep = 1  # index k of the next sweep, due at t0 + k*interval
        self._monitors: dict[str, HostMonitor] = {}
        self._ejections_active = 0
        self._overflow_total = 0
        self._events: list[OutlierEvent] = []

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
        return max(0.0, _ejection_end(self._config, monitor) - now)

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

    def carry_over(self, old: OutlierDetector) -> None:
        """Take over the state of ``old`` (the detector a config reload replaces).

        Every host monitored by both keeps its monitor as it was (counters, ejection,
        backoff, ejection and un-ejection times); new hosts stay fresh. The sweep clock is
        kept when the interval did not change, so an ejection ends at the sweep it would
        have ended at. Envoy itself starts a changed cluster from scratch; extproc keeps
        the state because a reload is not an outlier event.
        """
        config = self._config
        for address in self._monitors:
            monitor = old._monitors.get(address)
            if monitor is None:
                continue
            kept = dataclasses.replace(monitor)
            # A detector fires only when its counter reaches the threshold exactly (rule 6):
            # a count already at or past a lowered threshold would never fire again. The
            # next error fires instead; the reload itself ejects nobody.
            kept.consecutive_5xx = _below(kept.consecutive_5xx, config.consecutive_5xx_errors)
            kept.consecutive_gateway_failure = _below(
                kept.consecutive_gateway_failure, config.consecutive_gateway_errors
            )
            kept.consecutive_local_origin_failure = _below(
                kept.consecutive_local_origin_failure, config.consecutive_local_origin_failures
            )
            self._monitors[address] = kept
        self._ejections_active = sum(m.ejected for m in self._monitors.values())
        self._overflow_total = old._overflow_total
        if old._config.interval_s == self._config.interval_s:
            self._t0 = old._t0
            self._next_sweep = old._next_sweep

    def put_result(self, address: str, result: AttemptResult, now: float) -> bool:
        """Count one attempt's outcome for ``address``; eject inline when a threshold is hit.

        Mirrors ``DetectorHostMonitorImpl::putResult`` for what the router reports per
        attempt (rules 1-4), then ``onConsecutiveErrorWorker`` and ``ejectHost``. The caller
        runs due sweeps first.

        Returns:
            True when the host was ejected.
        """
        monitor = self._monitors.get(address)
        if monitor is None:
            return False
        config = self._config
        if not config.split_external_local_origin_errors:
            # putResultNoLocalExternalSplit: everything becomes an HTTP code.
            code = result.code(config.http_error_codes)
            return self._put_http_response_code(address, monitor, code, now)
        # putResultWithLocalExternalSplit.
        if result.connected:
            # LocalOriginConnectSuccess (the router's onPoolReady) -> localOriginNoFailure.
            monitor.consecutive_local_origin_failure = 0
        if result.kind is AttemptKind.ANSWER:
            code = http_response_code(result.status, config.http_error_codes)
            return self._put_http_response_code(address, monitor, code, now)
        # localOriginFailure: LocalOriginConnectFailed or LocalOriginTimeout.
        monitor.consecutive_local_origin_failure += 1
        if monitor.consecutive_local_origin_failure != config.consecutive_local_origin_failures:
            return False
        return self._on_consecutive_error(
            address, monitor, OutlierEjectionType.CONSECUTIVE_LOCAL_ORIGIN_FAILURE, now
        )

    def _put_http_response_code(
        self, address: str, monitor: HostMonitor, code: int, now: float
    ) -> bool:
        """``DetectorHostMonitorImpl::putHttpResponseCode`` (rules 5 and 6)."""
        config = self._config
        if not 500 <= code <= 599:
            monitor.consecutive_5xx = 0
            monitor.consecutive_gateway_failure = 0
            monitor.last_success_time = now
            return False
        ejected = False
        # Equality, as Envoy: a threshold of 0 never fires, and counts past the threshold
        # (possible while ejected) wait for the reset at un-ejection.
        if 502 <= code <= 504:  # Http::CodeUtility::isGatewayError
            monitor.consecutive_gateway_failure += 1
            if monitor.consecutive_gateway_failure == config.consecutive_gateway_errors:
                ejected = self._on_consecutive_error(
                    address, monitor, OutlierEjectionType.CONSECUTIVE_GATEWAY_FAILURE, now
                )
        else:
            monitor.consecutive_gateway_failure = 0
        monitor.consecutive_5xx += 1
        if monitor.consecutive_5xx == config.consecutive_5xx_errors:
            ejected |= self._on_consecutive_error(
                address, monitor, OutlierEjectionType.CONSECUTIVE_5XX, now
            )
        return ejected

    def _on_consecutive_error(
        self, address: str, monitor: HostMonitor, kind: OutlierEjectionType, now: float
    ) -> bool:
        """``DetectorImpl::onConsecutiveErrorWorker`` for one detection of type ``kind``."""
        if monitor.ejected:
            # Already ejected: ignore, and leave the counter alone (rule 7).
            return False
        ejected = self._eject(address, monitor, kind, now)
        # Reset the firing counter whether or not ejectHost ejected.
        if kind is OutlierEjectionType.CONSECUTIVE_5XX:
            monitor.consecutive_5xx = 0
        elif kind is OutlierEjectionType.CONSECUTIVE_GATEWAY_FAILURE:
            monitor.consecutive_gateway_failure = 0
        else:
            monitor.consecutive_local_origin_failure = 0
        return ejected

    def eject_for_fleet(
        self, address: str, *, since: float, duration_s: float, now: float
    ) -> FleetVerdict:
        """Eject ``address`` because another brain of the fleet did (``core.fleet``).

        The fleet's news obeys this detector's own rules: a host not in the cluster or already
        ejected is left as it is (rule 7), the ejection gate still applies (rule 8), and
        this proxy's own clean answer from the host after the other brain ejected it
        (``since``, on this clock) wins over the news: one proxy may reach an endpoint another
        cannot. An applied fleet ejection ends at the first sweep at or after its end, and
        leaves the host's backoff alone (the sender's backoff set its length).
        """
        monitor = self._monitors.get(address)
        if monitor is None:
            return FleetVerdict.NOT_OURS
        if monitor.ejected:
            return FleetVerdict.ALREADY_EJECTED
        if monitor.last_success_time is not None and monitor.last_success_time > since:
            return FleetVerdict.CONTRADICTED
        if not self._eject(address, monitor, OutlierEjectionType.FLEET, now):
            return FleetVerdict.REFUSED
        monitor.fleet_until = now + duration_s
        return FleetVerdict.EJECTED

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

    def _eject(
        self, address: str, monitor: HostMonitor, kind: OutlierEjectionType, now: float
    ) -> bool:
        """Apply ``DetectorImpl::ejectHost``: the gate shared by every detector, then enforcing."""
        config = self._config
        if not ejection_allowed(
            self._ejections_active,
            len(self._monitors),
            config.max_ejection_percent,
            config.always_eject_one_host,
        ):
            self._overflow_total += 1
            self._events.append(
                self._event(
                    OutlierAction.EJECT,
                    address,
                    monitor,
                    kind,
                    enforced=False,
                    now=now,
                    overflow=True,
                )
            )
            return False
        if (
            kind is OutlierEjectionType.CONSECUTIVE_GATEWAY_FAILURE
            and not config.enforcing_consecutive_gateway_failure
        ):
            # enforceEjection: Istio enforces 5xx and local-origin at 100, gateway at 0 or 100.
            self._events.append(
                self._event(OutlierAction.EJECT, address, monitor, kind, enforced=False, now=now)
            )
            return False
        self._ejections_active += 1
        # DetectorHostMonitorImpl::eject
        monitor.ejected = True
        monitor.ejection_type = kind
        monitor.num_ejections += 1
        monitor.last_ejection_time = now
        # 1. Grow the backoff while the uncapped duration is below max + base, so it stops one
        #    step past the cap (envoyproxy/envoy#37602) and decay needs that many clean sweeps.
        base = config.base_ejection_time_s
        if (
            kind is not OutlierEjectionType.FLEET
            and monitor.ejection_backoff * base < config.max_ejection_time_s + base
        ):
            monitor.ejection_backoff += 1
        self._events.append(
            self._event(OutlierAction.EJECT, address, monitor, kind, enforced=True, now=now)
        )
        return True

    def _sweep(self, at: float) -> bool:
        """One run of ``DetectorImpl::onIntervalTimer`` at sweep time ``at``."""
        config = self._config
        changed = False
        # 1. checkHostForUneject: ejected long enough (duration <= elapsed) -> back in.
        for address, monitor in self._monitors.items():
            if not monitor.ejected or monitor.last_ejection_time is None:
                continue
            if _ejection_over(config, monitor, at):
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
        """Apply ``DetectorImpl::unejectHost``: back in, all consecutive counters reset."""
        self._ejections_active -= 1
        monitor.ejected = False
        monitor.consecutive_5xx = 0
        monitor.consecutive_gateway_failure = 0
        monitor.consecutive_local_origin_failure = 0
        monitor.last_unejection_time = at
        monitor.fleet_until = None
        self._events.append(
            self._event(
                OutlierAction.UNEJECT,
                address,
                monitor,
                monitor.ejection_type,
                enforced=True,
                now=at,
            )
        )

    def _event(
        self,
        action: OutlierAction,
        address: str,
        monitor: HostMonitor,
        kind: OutlierEjectionType,
        *,
        enforced: bool,
        now: float,
        overflow: bool = False,
    ) -> OutlierEvent:
        return OutlierEvent(
            action=action,
            cluster_name=self._cluster_name,
            upstream_url=address,
            type=kind,
            num_ejections=monitor.num_ejections,
            enforced=enforced,
            time_s=now,
            overflow=overflow,
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
        end = _ejection_end(self._config, monitor)

        def done(k: int) -> bool:
            return _ejection_over(self._config, monitor, self._sweep_time(k))

        k = max(self._next_sweep, math.ceil((end - self._t0) / self._config.interval_s))
        # Correct any floating-point slip of the estimate with the exact sweep predicate.
        while not done(k):
            k += 1
        while k > self._next_sweep and done(k - 1):
            k -= 1
        return k
