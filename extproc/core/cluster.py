"""The per-service state the server consults on every request: a façade over hosts and picks.

One ``ClusterState`` is what one Istio sidecar's Envoy holds for one cluster
(``outbound|<port>||<host>``) as seen from one workload locality. Envoy's ``ClusterImpl``
keeps the same three parts apart, and so does the core:

* ``hostset.PrioritySet``: host membership per priority and locality, the healthy sets and
  the priority load (Envoy's ``PrioritySetImpl``/``HostSetImpl``);
* ``outlier_detector.OutlierDetector``, when the DestinationRule has ``outlierDetection``
  (Envoy's ``DetectorImpl``): which hosts are ejected;
* ``balancer.LoadBalancer``: the priority draw, the locality schedule and the host choice
  (Envoy's ``ZoneAwareLoadBalancerBase`` and the LB classes).

This class runs the outlier sweeps due by every ``now`` it is given, and recomputes the
healthy sets and the schedules only when an ejection, un-ejection or membership change
happened, never per request. It also carries state across a config reload (``carry_over``).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from extproc.core.balancer import LoadBalancer, Pick
from extproc.core.fleet import FleetEjection, contradicted_after, remaining_s
from extproc.core.hostset import HostView, PrioritySet, fixed_ips
from extproc.core.locality import load_assignment
from extproc.core.outlier import AttemptResult, OutlierEvent
from extproc.core.outlier_detector import FleetVerdict, OutlierDetector
from extproc.core.policy import Resolution, Service, Workload

__all__ = ["ClusterState"]


class ClusterState:
    """Hosts, outlier state and load balancing of one service for one workload.

    Every method that takes ``now`` first runs the outlier sweeps due by then, so the state
    is always the one Envoy would have at ``now``.
    """

    def __init__(
        self, service: Service, workload: Workload, *, now: float, rng: random.Random
    ) -> None:
        """Build the state; STATIC endpoints get their address as their only host.

        Args:
            service: The compiled service.
            workload: The client (locality and labels); it decides the endpoint priorities
                and locality weights.
            now: Creation time; outlier sweeps run at ``now + k*interval``.
            rng: Randomness for priority draws and host choices (seed it in tests).
        """
        self.service = service
        assignment = load_assignment(service, workload)
        config = service.outlier_detection
        self._detector = (
            None if config is None else OutlierDetector(config, service.cluster_name, now=now)
        )
        self._hosts = PrioritySet(
            service, assignment, 0 if config is None else config.min_health_percent
        )
        self._balancer = LoadBalancer(
            service.lb_algorithm, locality_weighted=assignment.locality_weighted, rng=rng
        )
        self._dns_names = tuple(
            e.address for e in service.endpoints if fixed_ips(service.resolution, e.address) is None
        )
        self._dirty = True
        self._generation = 0
        # The state that replaced this one in a config reload (see ``carry_over``).
        self._successor: ClusterState | None = None
        if service.resolution is Resolution.STATIC and self._hosts.set_fixed_endpoints():
            self._membership_changed()

    @property
    def ejections_active(self) -> int:
        """Hosts ejected right now."""
        return 0 if self._detector is None else self._detector.ejections_active

    @property
    def dns_names(self) -> tuple[str, ...]:
        """The endpoint addresses that need DNS (``hostset.fixed_ips``), in config order."""
        return self._dns_names

    def set_endpoint_addresses(self, endpoint_index: int, ips: Sequence[str], now: float) -> None:
        """Give ``service.endpoints[endpoint_index]`` the hosts of a DNS answer with ``ips``.

        Which of them become hosts is ``Resolution.host_ips`` (DNS_ROUND_ROBIN: the first).
        Hosts that stay keep their outlier state and active requests; hosts that go are
        dropped, as Envoy's STRICT_DNS cluster and the detector's member-update callback do.

        Raises:
            IndexError: ``endpoint_index`` is not an endpoint of the service.
        """
        if not 0 <= endpoint_index < len(self.service.endpoints):
            raise IndexError(f"{self.service.cluster_name}: no endpoint {endpoint_index}")
        self.advance(now)
        if self._hosts.set_endpoint_ips(endpoint_index, ips):
            self._membership_changed()

    def set_ip_endpoints(self, now: float) -> None:
        """Give every endpoint that needs no DNS (an IP literal) its one address."""
        self.advance(now)
        if self._hosts.set_fixed_endpoints():
            self._membership_changed()

    def advance(self, now: float) -> None:
        """Run every outlier sweep due at ``t0 + k*interval <= now``, in order."""
        if (
            self._detector is not None
            and self._detector.next_sweep_time <= now
            and self._detector.advance(now)
        ):
            self._dirty = True

    def pick(self, now: float) -> Pick:
        """Choose the host for one attempt and count it as active on that host.

        See ``balancer.LoadBalancer.pick`` (Envoy's ``ZoneAwareLoadBalancerBase::chooseHost``).
        """
        self.advance(now)
        if self._dirty:
            self._refresh()
        return self._balancer.pick(self._hosts)

    def record(
        self, host: str, result: AttemptResult, now: float, *, finished: bool = True
    ) -> None:
        """Count the outcome of one attempt on ``host`` and end it as an active request.

        Args:
            host: The ``ip:port`` that served the attempt; unknown hosts are ignored.
            result: How the attempt ended.
            now: When the outcome was seen.
            finished: False for an earlier attempt of a request that is still active on
                the same host (a retry), so its active-request count stays.
        """
        if self._successor is not None:
            # Picked before a reload replaced this state: the outcome counts in the new one.
            self._successor.record(host, result, now, finished=finished)
            return
        self.advance(now)
        entry = self._hosts.hosts.get(host)
        if entry is None:
            return
        if finished and entry.active_requests > 0:
            entry.active_requests -= 1
        if self._detector is not None and self._detector.put_result(host, result, now):
            self._dirty = True

    def apply_fleet_ejection(
        self, ejection: FleetEjection, now: float, now_wall: float
    ) -> FleetVerdict:
        """Eject a host because another brain of the fleet did (``core.fleet``), under this
        cluster's own outlier detection: no detection, no fleet ejection.

        Args:
            ejection: the other brain's message, already decoded.
            now: this process's monotonic clock.
            now_wall: this machine's wall clock, on which the message's times are read.
        """
        if self._successor is not None:
            return self._successor.apply_fleet_ejection(ejection, now, now_wall)
        detector = self._detector
        outlier = self.service.outlier_detection
        if detector is None or outlier is None or ejection.cluster != self.service.cluster_name:
            return FleetVerdict.NOT_OURS
        duration = remaining_s(ejection, now_wall, outlier.max_ejection_time_s)
        if duration is None:
            return FleetVerdict.OVER
        self.advance(now)
        since = contradicted_after(ejection, now, now_wall)
        verdict = detector.eject_for_fleet(ejection.host, since=since, duration_s=duration, now=now)
        if verdict is FleetVerdict.EJECTED:
            self._dirty = True
        return verdict

    def ejection_time_left_s(self, host: str, now: float) -> float | None:
        """How long the ejection of ``host`` has left (a later sweep ends it), or None."""
        if self._successor is not None:
            return self._successor.ejection_time_left_s(host, now)
        return None if self._detector is None else self._detector.ejection_time_left_s(host, now)

    def has_host(self, host: str) -> bool:
        """Whether ``host`` (``ip:port``) is one of the cluster's hosts now.

        Outcomes for other addresses are dropped (``record`` ignores them), so the data
        paths check this before counting a report in the metrics.
        """
        if self._successor is not None:
            return self._successor.has_host(host)
        return host in self._hosts.hosts

    def release(self, host: str) -> None:
        """End a picked attempt that produced no outcome (the stream was aborted)."""
        if self._successor is not None:
            self._successor.release(host)
            return
        entry = self._hosts.hosts.get(host)
        if entry is not None and entry.active_requests > 0:
            entry.active_requests -= 1

    def carry_over(
        self, old: ClusterState | None, now: float, *, after_generation: int = 0
    ) -> None:
        """Take over from ``old``, the state of the same cluster a config reload replaces.

        1. Resolved addresses and active requests (``PrioritySet.carry_over``): a DNS
           endpoint whose name ``old`` had resolved starts with those IPs, so the reload
           empties no endpoint while its name is being resolved again; a host (``ip:port``)
           that stays keeps its active requests.
        2. When both configs have ``outlierDetection``, every host that stays keeps its
           whole outlier state (``OutlierDetector.carry_over``). Hosts that went are
           dropped, new ones start fresh, as a DNS change does.
        3. ``generation`` continues above ``old``'s and ``after_generation`` (what a data
           path last saw of this cluster name), so routing-table versions and EDS pushes
           keep going up.
        4. ``old`` forwards ``record`` and ``release`` here from now on, so requests picked
           before the reload count in this state.

        Args:
            old: The replaced state, or None when the cluster is new to this config.
            now: The reload time; ``old`` runs its sweeps due by then first.
            after_generation: A generation the new one must exceed (a cluster name that
                an earlier config had, then dropped).
        """
        floor = after_generation
        if old is not None:
            old.advance(now)
            floor = max(floor, old.generation)
            self._hosts.carry_over(old._hosts)
            self._membership_changed()
            if self._detector is not None and old._detector is not None:
                self._detector.carry_over(old._detector)
            old._successor = self
        self._generation = max(self._generation, floor)
        self._dirty = True  # the next read moves generation past the floor

    @property
    def generation(self) -> int:
        """A counter that moves on every change of hosts, health or priority load.

        The data paths that copy this state into Envoy (the routing table, EDS) compare it
        with what they last sent.
        """
        if self._dirty:
            self._refresh()
        return self._generation

    def route_weights(self, now: float) -> tuple[tuple[str, int], ...]:
        """The hosts a request may go to now, with weights that reproduce ``pick``'s spread.

        See ``balancer.LoadBalancer.route_weights``.
        """
        self.advance(now)
        if self._dirty:
            self._refresh()
        return self._balancer.route_weights(self._hosts)

    def drain_events(self) -> list[OutlierEvent]:
        """The outlier events since the last drain, in order."""
        return [] if self._detector is None else self._detector.drain_events()

    def hosts(self, now: float) -> list[HostView]:
        """Every host, by priority, then endpoint config order, then address.

        Runs the sweeps due by ``now`` first, so ``ejected`` is what Envoy would report.
        """
        self.advance(now)
        detector = self._detector
        views: list[HostView] = []
        for group in self._hosts.by_priority:
            for host in group:
                endpoint = self.service.endpoints[host.endpoint_index]
                monitor = None if detector is None else detector.monitor(host.address)
                views.append(
                    HostView(
                        ip=host.ip,
                        port=host.port,
                        endpoint_address=endpoint.address,
                        locality=endpoint.locality,
                        priority=host.priority,
                        weight=host.weight,
                        ejected=monitor is not None and monitor.ejected,
                        consecutive_5xx=0 if monitor is None else monitor.consecutive_5xx,
                        num_ejections=0 if monitor is None else monitor.num_ejections,
                        ejection_backoff=0 if monitor is None else monitor.ejection_backoff,
                        ejection_time_left_s=(
                            None
                            if detector is None
                            else detector.ejection_time_left_s(host.address, now)
                        ),
                        active_requests=host.active_requests,
                    )
                )
        return views

    def _membership_changed(self) -> None:
        """The host table was rebuilt: the detector follows it (Envoy's member update)."""
        if self._detector is not None:
            self._detector.set_hosts(self._hosts.hosts)
        self._dirty = True

    def _refresh(self) -> None:
        """Recompute healthy sets, priority load and schedules after a change."""
        detector = self._detector
        self._hosts.refresh(None if detector is None else detector.is_ejected)
        self._balancer.refresh(self._hosts)
        self._dirty = False
        self._generation += 1
