"""The per-service state the server consults on every request: hosts, outlier state, picks.

One ``ClusterState`` is what one Istio sidecar's Envoy holds for one cluster
(``outbound|<port>||<host>``) as seen from one workload locality:

* hosts: every resolved IP of every endpoint, as ``ip:port`` (Envoy STRICT_DNS: each A record
  is a host and inherits its endpoint's locality, priority and weight);
* priorities and locality weights from ``locality.load_assignment`` (Istio's
  ``applyLocalityFailover``, ``applyFailoverPriorities`` and ``applyLocalityWeights``);
* an ``outlier.OutlierDetector`` when the DestinationRule has ``outlierDetection``;
* the priority split from ``priority.compute_priority_load``, recomputed only when an
  ejection, un-ejection or membership change happens, never per request;
* the host source inside the chosen priority (Envoy's ``ZoneAwareLoadBalancerBase::
  hostSourceToUse``): all its hosts when it is in panic; else, when Istio set
  ``locality_weighted_lb_config``, the healthy hosts of one locality picked by an
  earliest-deadline-first schedule over effective weights
  ``locality_weight * min(1, 1.4 * healthy / total)`` (``HostSetImpl::
  effectiveLocalityWeight``, ``chooseHealthyLocality``), rebuilt on every health or
  membership change and started ``seed % n`` picks in; else its healthy hosts;
* the load balancer of ``lb_algorithm`` inside that host source:

  - ROUND_ROBIN (``round_robin_lb.h``): equal weights -> ``hosts[index++ % n]``, one index per
    host source (priority, healthy-or-all, locality), every index starting at one seed per
    cluster like Envoy's ``seed_``. Unequal weights -> an earliest-deadline-first schedule
    (Envoy's ``EdfScheduler``: deadline += 1/weight), pre-rolled ``seed % n`` picks.
  - LEAST_REQUEST (``least_request_lb.cc``): equal weights -> Envoy's default N_CHOICES with
    2 choices: two uniform draws (with replacement), the second wins only with strictly fewer
    active requests. Unequal weights -> the EDF schedule with weight ``w/(active+1)``
    (``hostWeight`` with ``active_request_bias`` 1), evaluated when a host is re-queued.
  - RANDOM: uniform over the hosts, ignoring weights, like Envoy's random LB.

Not modelled: degraded hosts, slow start. An address listed by two endpoints is one host,
owned by the first endpoint listing it that gets traffic (Envoy would keep two host
objects; the server can only name the address).
"""

from __future__ import annotations

import enum
import heapq
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from extproc.core.locality import load_assignment
from extproc.core.outlier import AttemptResult, OutlierDetector, OutlierEvent
from extproc.core.policy import (
    LbAlgorithm,
    Locality,
    Resolution,
    Service,
    Workload,
    host_address,
)
from extproc.core.priority import (
    OVERPROVISIONING_FACTOR,
    HostCounts,
    choose_priority,
    compute_priority_load,
)

__all__ = ["ClusterState", "HostView", "OutlierEvent", "Pick", "PickReason"]

# Envoy's default least_request choice_count.
_CHOICE_COUNT = 2
# route_weights: a priority's load percent times this, split over its hosts.
_WEIGHT_SCALE = 1000
# A host source key: (priority, panic, locality index or _WHOLE_PRIORITY).
_WHOLE_PRIORITY = -1

_T = TypeVar("_T")


class PickReason(enum.Enum):
    """Why a request went where it went."""

    HEALTHY = "healthy"  # a non-ejected host of a priority not in panic
    PANIC = "panic"  # the priority was in panic: any of its hosts, ejected or not
    NO_HEALTHY_UPSTREAM = "no_healthy_upstream"  # nothing can serve: answer 503 (Envoy UH)


@dataclass(frozen=True, slots=True)
class Pick:
    """The decision for one attempt."""

    host: str | None  # "ip:port", None when nothing can serve
    priority: int | None
    reason: PickReason


@dataclass(frozen=True, slots=True)
class HostView:
    """One host as the status view shows it (``istioctl pc endpoints`` with more detail)."""

    address: str
    endpoint_address: str  # the config address (e.g. a hostname) it was resolved from
    locality: Locality
    priority: int
    weight: int
    ejected: bool
    consecutive_5xx: int
    num_ejections: int
    ejection_backoff: int
    ejection_time_left_s: float | None  # until the ejection may end (a sweep decides)
    active_requests: int


@dataclass(slots=True, eq=False)
class _Host:
    """A host's load-balancing identity; its outlier state lives in the detector."""

    address: str
    endpoint_index: int
    priority: int
    locality: int  # index into its priority's localities
    weight: int
    active_requests: int = 0


@dataclass(slots=True, eq=False)
class _Locality:
    """One locality of one priority: Envoy's ``hostsPerLocality`` entry and its weight."""

    index: int
    locality: Locality
    weight: int  # Istio's locality weight (sum of endpoint weights, or distribute's share)
    hosts: list[_Host] = field(default_factory=list)
    healthy: list[_Host] = field(default_factory=list)
    effective_weight: float = 0.0  # weight * availability, as of the last refresh


class _EdfScheduler(Generic[_T]):
    """Earliest-deadline-first, as Envoy's ``EdfScheduler`` (hosts or localities).

    Each entry is queued with deadline ``now + 1/weight``; a pick pops the earliest (ties in
    queue order), moves ``now`` to it and re-queues the entry with its current weight.
    """

    __slots__ = ("_heap", "_now", "_order")

    def __init__(self, entries: Sequence[_T], weight: Callable[[_T], float]) -> None:
        self._heap: list[tuple[float, int, _T]] = []
        self._now = 0.0
        self._order = 0
        for entry in entries:
            self._add(entry, weight(entry))

    @classmethod
    def with_picks(
        cls, entries: Sequence[_T], weight: Callable[[_T], float], seed: int
    ) -> _EdfScheduler[_T]:
        """Start ``seed % n`` picks in, like Envoy's ``createWithPicks``, so that schedules
        built from the same entries do not all begin on the same one."""
        scheduler = cls(entries, weight)
        for _ in range(seed % len(entries)):
            scheduler.pick(weight)
        return scheduler

    def pick(self, weight: Callable[[_T], float]) -> _T:
        deadline, _, entry = heapq.heappop(self._heap)
        self._now = deadline
        self._add(entry, weight(entry))
        return entry

    def _add(self, entry: _T, weight: float) -> None:
        heapq.heappush(self._heap, (self._now + 1.0 / weight, self._order, entry))
        self._order += 1


def _static_weight(host: _Host) -> float:
    return float(host.weight)


def _unit_weight(host: _Host) -> float:
    return 1.0


def _least_request_weight(host: _Host) -> float:
    # LeastRequestLoadBalancer::hostWeight with active_request_bias 1.0.
    return host.weight / (host.active_requests + 1)


def _effective_weight(locality: _Locality) -> float:
    return locality.effective_weight


def _effective_locality_weight(weight: int, healthy: int, total: int) -> float:
    """Envoy's ``HostSetImpl::effectiveLocalityWeight``: the weight scaled by availability.

    In floating point as Envoy computes it: ``weight * min(1, 1.4 * healthy / total)``; a
    locality without hosts weighs 0.
    """
    if total == 0:
        return 0.0
    return weight * min(1.0, (OVERPROVISIONING_FACTOR / 100.0) * (healthy / total))


class ClusterState:
    """Hosts, outlier state and load balancing of one service for one workload.

    Every method that takes ``now`` first runs the outlier sweeps due by then, so the state
    is always the one Envoy would have at ``now``.
    """

    def __init__(
        self,
        service: Service,
        workload: Workload | Locality,
        *,
        now: float,
        rng: random.Random,
    ) -> None:
        """Build the state; STATIC endpoints get their address as their only host.

        Args:
            service: The compiled service.
            workload: The client (locality and labels; a bare locality has no labels); it
                decides the endpoint priorities and locality weights.
            now: Creation time; outlier sweeps run at ``now + k*interval``.
            rng: Randomness for priority draws and host choices (seed it in tests).
        """
        self.service = service
        self._rng = rng
        self._cluster_name = service.cluster_name
        assignment = load_assignment(service, workload)
        self._num_priorities = assignment.num_priorities
        self._locality_weighted = assignment.locality_weighted
        # Per priority, its localities in Envoy's order; per endpoint, (priority, locality)
        # or None when Istio sends it no traffic (distribute left its locality out).
        self._localities: list[list[_Locality]] = [[] for _ in range(self._num_priorities)]
        placement: dict[int, tuple[int, int]] = {}
        for group in assignment.groups:
            localities = self._localities[group.priority]
            localities.append(_Locality(len(localities), group.locality, group.weight))
            for index in group.endpoints:
                placement[index] = (group.priority, len(localities) - 1)
        self._endpoint_placement = tuple(placement.get(i) for i in range(len(service.endpoints)))
        self._locality_schedulers: list[_EdfScheduler[_Locality] | None] = [
            None for _ in range(self._num_priorities)
        ]
        self._detector: OutlierDetector | None = (
            None
            if service.outlier_detection is None
            else OutlierDetector(service.outlier_detection, self._cluster_name, now=now)
        )
        self._panic_threshold = (
            0 if service.outlier_detection is None else service.outlier_detection.min_health_percent
        )
        # Envoy draws one seed per load balancer; every round-robin index starts from it.
        self._seed = rng.getrandbits(32)
        self._endpoint_ips: list[tuple[str, ...]] = [() for _ in service.endpoints]
        self._hosts: dict[str, _Host] = {}
        self._by_priority: list[list[_Host]] = [[] for _ in range(self._num_priorities)]
        self._healthy_by_priority: list[list[_Host]] = [[] for _ in range(self._num_priorities)]
        self._load = compute_priority_load([], 0)
        self._dirty = True
        self._generation = 0
        self._rr_indexes: dict[tuple[int, bool, int], int] = {}
        self._schedulers: dict[tuple[int, bool, int], _EdfScheduler[_Host]] = {}
        self._equal_weights: dict[tuple[int, bool, int], bool] = {}
        # The state that replaced this one in a config reload (see ``carry_over``).
        self._successor: ClusterState | None = None
        if service.resolution is Resolution.STATIC:
            for index, endpoint in enumerate(service.endpoints):
                self._endpoint_ips[index] = (endpoint.address,)
            self._rebuild_hosts()

    @property
    def ejections_active(self) -> int:
        """Hosts ejected right now."""
        return 0 if self._detector is None else self._detector.ejections_active

    @property
    def overflow_total(self) -> int:
        """Detections refused by ``max_ejection_percent`` since creation."""
        return 0 if self._detector is None else self._detector.overflow_total

    def set_endpoint_addresses(self, endpoint_index: int, ips: Sequence[str], now: float) -> None:
        """Replace the resolved IPs of ``service.endpoints[endpoint_index]``.

        Hosts that stay keep their outlier state and active requests; hosts that go are
        dropped, as Envoy's STRICT_DNS cluster and the detector's member-update callback do.

        Raises:
            IndexError: ``endpoint_index`` is not an endpoint of the service.
        """
        if not 0 <= endpoint_index < len(self._endpoint_ips):
            raise IndexError(f"{self._cluster_name}: no endpoint {endpoint_index}")
        self.advance(now)
        new = tuple(dict.fromkeys(ips))
        if new != self._endpoint_ips[endpoint_index]:
            self._endpoint_ips[endpoint_index] = new
            self._rebuild_hosts()

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

        Mirrors ``ZoneAwareLoadBalancerBase::chooseHost``: priority by load, then all hosts
        of that priority when it is in panic, else the healthy hosts of a locality picked by
        weight (with locality-weighted balancing) or of the whole priority.
        """
        self.advance(now)
        if self._dirty:
            self._refresh()
        load = self._load
        if load.no_healthy_upstream:
            return Pick(host=None, priority=None, reason=PickReason.NO_HEALTHY_UPSTREAM)
        priority = choose_priority(load.loads, self._rng.randrange(100) + 1)
        panic = load.panic[priority]
        source = (priority, panic, _WHOLE_PRIORITY)
        if panic:
            hosts = self._by_priority[priority]
        else:
            hosts = self._healthy_by_priority[priority]
            scheduler = self._locality_schedulers[priority]
            if scheduler is not None:
                # hostSourceToUse: chooseHealthyLocality, then that locality's healthy hosts.
                locality = scheduler.pick(_effective_weight)
                hosts = locality.healthy
                source = (priority, panic, locality.index)
        if not hosts:
            return Pick(host=None, priority=None, reason=PickReason.NO_HEALTHY_UPSTREAM)
        host = self._choose_host(source, hosts)
        host.active_requests += 1
        return Pick(
            host=host.address,
            priority=priority,
            reason=PickReason.PANIC if panic else PickReason.HEALTHY,
        )

    def record(
        self, host: str, result: AttemptResult | int, now: float, *, finished: bool = True
    ) -> None:
        """Count the outcome of one attempt on ``host`` and end it as an active request.

        Args:
            host: The ``ip:port`` that served the attempt; unknown hosts are ignored.
            result: How the attempt ended (``outlier.AttemptResult``); a bare int is an
                upstream answer with that status.
            now: When the outcome was seen.
            finished: False for an earlier attempt of a request that is still active on
                the same host (a retry), so its active-request count stays.
        """
        if self._successor is not None:
            # Picked before a reload replaced this state: the outcome counts in the new one.
            self._successor.record(host, result, now, finished=finished)
            return
        self.advance(now)
        entry = self._hosts.get(host)
        if entry is None:
            return
        if finished and entry.active_requests > 0:
            entry.active_requests -= 1
        if isinstance(result, int):
            result = AttemptResult.answer(result)
        if self._detector is not None and self._detector.put_result(host, result, now):
            self._dirty = True

    def has_host(self, host: str) -> bool:
        """Whether ``host`` (``ip:port``) is one of the cluster's hosts now.

        Outcomes for other addresses are dropped (``record`` ignores them), so the data
        paths check this before counting a report in the metrics.
        """
        if self._successor is not None:
            return self._successor.has_host(host)
        return host in self._hosts

    def release(self, host: str) -> None:
        """End a picked attempt that produced no outcome (the stream was aborted)."""
        if self._successor is not None:
            self._successor.release(host)
            return
        entry = self._hosts.get(host)
        if entry is not None and entry.active_requests > 0:
            entry.active_requests -= 1

    def carry_over(
        self, old: ClusterState | None, now: float, *, after_generation: int = 0
    ) -> None:
        """Take over from ``old``, the state of the same cluster a config reload replaces.

        1. Resolved addresses: a DNS endpoint whose name ``old`` had resolved starts with
           those IPs (DNS_ROUND_ROBIN: the first), so the reload empties no endpoint while
           its name is being resolved again.
        2. Per host (``ip:port``) that stays: its active requests and, when both configs
           have ``outlierDetection``, its whole outlier state
           (``OutlierDetector.carry_over``). Hosts that went are dropped, new ones start
           fresh, as a DNS change does.
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
            if self.service.resolution is not Resolution.STATIC:
                resolved: dict[str, tuple[str, ...]] = {}
                for endpoint, ips in zip(old.service.endpoints, old._endpoint_ips, strict=True):
                    if ips:
                        resolved.setdefault(endpoint.address, ips)
                for index, endpoint in enumerate(self.service.endpoints):
                    ips = resolved.get(endpoint.address, ())
                    if self.service.resolution is Resolution.DNS_ROUND_ROBIN:
                        ips = ips[:1]
                    if ips and not self._endpoint_ips[index]:
                        self._endpoint_ips[index] = ips
                self._rebuild_hosts()
            for address, host in self._hosts.items():
                previous = old._hosts.get(address)
                if previous is not None:
                    host.active_requests = previous.active_requests
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

        Each host's weight is its true share of the load, in parts per 100,000: its
        priority's load (Envoy's priority load, panic included), times its locality's share
        of the effective locality weights when ``pick`` chooses a locality first, times its
        share of the eligible hosts it is drawn from (healthy ones, or all of the priority
        in panic): by endpoint weight, or evenly for RANDOM, which ignores weights. A
        weighted draw over these entries picks as ``pick`` does with RANDOM or ROUND_ROBIN
        over many requests; LEAST_REQUEST's preference for idle hosts needs per-request
        counts and is not reproduced. Empty when nothing can serve (no healthy upstream).
        """
        self.advance(now)
        if self._dirty:
            self._refresh()
        load = self._load
        if load.no_healthy_upstream:
            return ()
        entries: list[tuple[str, int]] = []
        # The host's share within its source: by endpoint weight, except for RANDOM, which
        # ignores weights (Envoy's RandomLoadBalancer draws uniformly).
        weight = _unit_weight if self.service.lb_algorithm is LbAlgorithm.RANDOM else _static_weight
        for priority, share in enumerate(load.loads):
            if share <= 0:
                continue
            parts = share * _WEIGHT_SCALE
            panic = load.panic[priority]
            if panic or self._locality_schedulers[priority] is None:
                hosts = (
                    self._by_priority[priority] if panic else self._healthy_by_priority[priority]
                )
                total = sum(weight(h) for h in hosts)
                entries.extend((h.address, max(1, int(parts * weight(h) / total))) for h in hosts)
                continue
            # Locality-weighted: the locality's share of the schedule, then the host's share
            # of that locality's healthy hosts.
            localities = [loc for loc in self._localities[priority] if loc.effective_weight > 0]
            weights = sum(loc.effective_weight for loc in localities)
            for loc in localities:
                total = sum(weight(h) for h in loc.healthy)
                scale = parts * loc.effective_weight / (weights * total)
                entries.extend((h.address, max(1, int(scale * weight(h)))) for h in loc.healthy)
        return tuple(entries)

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
        for group in self._by_priority:
            for host in group:
                endpoint = self.service.endpoints[host.endpoint_index]
                monitor = None if detector is None else detector.monitor(host.address)
                views.append(
                    HostView(
                        address=host.address,
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

    def _rebuild_hosts(self) -> None:
        """Recompute the host table from the endpoints' resolved IPs (membership change)."""
        old = self._hosts
        hosts: dict[str, _Host] = {}
        for index, ips in enumerate(self._endpoint_ips):
            endpoint = self.service.endpoints[index]
            placement = self._endpoint_placement[index]
            if placement is None:
                continue  # Istio sends this endpoint no traffic: Envoy never sees it
            for ip in ips:
                address = host_address(ip, endpoint.port)
                if address in hosts:
                    continue  # first endpoint listing an address owns it
                previous = old.get(address)
                hosts[address] = _Host(
                    address=address,
                    endpoint_index=index,
                    priority=placement[0],
                    locality=placement[1],
                    weight=max(1, endpoint.weight),  # Istio treats weight 0 as 1
                    active_requests=0 if previous is None else previous.active_requests,
                )
        self._hosts = hosts
        groups: list[list[_Host]] = [[] for _ in range(self._num_priorities)]
        for localities in self._localities:
            for loc in localities:
                loc.hosts = []
        for host in sorted(hosts.values(), key=lambda h: (h.endpoint_index, h.address)):
            groups[host.priority].append(host)
            self._localities[host.priority][host.locality].hosts.append(host)
        self._by_priority = groups
        if self._detector is not None:
            self._detector.set_hosts(hosts)
        self._dirty = True

    def _refresh(self) -> None:
        """Recompute healthy lists and priority loads after a health or membership change."""
        detector = self._detector
        healthy = [
            [h for h in group if detector is None or not detector.is_ejected(h.address)]
            for group in self._by_priority
        ]
        self._healthy_by_priority = healthy
        self._load = compute_priority_load(
            [
                HostCounts(healthy=len(ok), total=len(group))
                for ok, group in zip(healthy, self._by_priority, strict=True)
            ],
            self._panic_threshold,
        )
        for priority, localities in enumerate(self._localities):
            for loc in localities:
                loc.healthy = [
                    h for h in loc.hosts if detector is None or not detector.is_ejected(h.address)
                ]
                loc.effective_weight = _effective_locality_weight(
                    loc.weight, len(loc.healthy), len(loc.hosts)
                )
            self._locality_schedulers[priority] = self._locality_scheduler(priority)
        # Host lists changed: EDF schedules are rebuilt on demand (Envoy's refresh());
        # round-robin indexes survive, as Envoy's rr_indexes_ do.
        self._schedulers.clear()
        self._equal_weights.clear()
        self._dirty = False
        self._generation += 1

    def _locality_scheduler(self, priority: int) -> _EdfScheduler[_Locality] | None:
        """The locality schedule of one priority (Envoy's ``rebuildLocalityScheduler``).

        None without locality-weighted balancing, or when no locality of the priority has a
        healthy host: the pick then falls back to the priority's healthy hosts.
        """
        if not self._locality_weighted or not self._healthy_by_priority[priority]:
            return None
        entries = [loc for loc in self._localities[priority] if loc.effective_weight > 0]
        if not entries:
            return None
        return _EdfScheduler.with_picks(entries, _effective_weight, self._seed)

    def _choose_host(self, source: tuple[int, bool, int], hosts: list[_Host]) -> _Host:
        """Pick within one host source with the service's load balancer."""
        algorithm = self.service.lb_algorithm
        if algorithm is LbAlgorithm.RANDOM:
            return hosts[self._rng.randrange(len(hosts))]
        equal = self._equal_weights.get(source)
        if equal is None:
            first = hosts[0].weight
            equal = all(h.weight == first for h in hosts)
            self._equal_weights[source] = equal
        if algorithm is LbAlgorithm.ROUND_ROBIN:
            if equal:
                index = self._rr_indexes.get(source, self._seed)
                self._rr_indexes[source] = index + 1
                return hosts[index % len(hosts)]
            return self._scheduler(source, hosts, _static_weight).pick(_static_weight)
        # LEAST_REQUEST
        if equal:
            candidate = hosts[self._rng.randrange(len(hosts))]
            for _ in range(_CHOICE_COUNT - 1):
                sampled = hosts[self._rng.randrange(len(hosts))]
                if sampled.active_requests < candidate.active_requests:
                    candidate = sampled
            return candidate
        return self._scheduler(source, hosts, _least_request_weight).pick(_least_request_weight)

    def _scheduler(
        self,
        source: tuple[int, bool, int],
        hosts: list[_Host],
        weight: Callable[[_Host], float],
    ) -> _EdfScheduler[_Host]:
        scheduler = self._schedulers.get(source)
        if scheduler is None:
            scheduler = _EdfScheduler.with_picks(hosts, weight, self._seed)
            self._schedulers[source] = scheduler
        return scheduler
