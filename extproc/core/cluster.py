"""The per-service state the server consults on every request: hosts, outlier state, picks.

One ``ClusterState`` is what one Istio sidecar's Envoy holds for one cluster
(``outbound|<port>||<host>``) as seen from one workload locality:

* hosts: every resolved IP of every endpoint, as ``ip:port`` (Envoy STRICT_DNS: each A record
  is a host and inherits its endpoint's locality, priority and weight);
* priorities from ``locality.endpoint_priorities`` (Istio's ``applyLocalityFailover``);
* an ``outlier.OutlierDetector`` when the DestinationRule has ``outlierDetection``;
* the priority split from ``priority.compute_priority_load``, recomputed only when an
  ejection, un-ejection or membership change happens, never per request;
* the load balancer of ``lb_algorithm`` inside the chosen priority (Envoy's
  ``ZoneAwareLoadBalancerBase::chooseHost`` -> ``hostSourceToUse``):

  - ROUND_ROBIN (``round_robin_lb.h``): equal weights -> ``hosts[index++ % n]``, one index per
    host source (priority, healthy-or-all), every index starting at one random seed per
    cluster like Envoy's ``seed_``. Unequal weights -> an earliest-deadline-first schedule
    (Envoy's ``EdfScheduler``: deadline += 1/weight), pre-rolled ``seed % n`` picks.
  - LEAST_REQUEST (``least_request_lb.cc``): equal weights -> Envoy's default N_CHOICES with
    2 choices: two uniform draws (with replacement), the second wins only with strictly fewer
    active requests. Unequal weights -> the EDF schedule with weight ``w/(active+1)``
    (``hostWeight`` with ``active_request_bias`` 1), evaluated when a host is re-queued.
  - RANDOM: uniform over the hosts, ignoring weights, like Envoy's random LB.

Not modelled: Envoy's locality-weighted pick inside a priority (Istio turns it on only when
``failover`` is set and several localities share a priority), degraded hosts, slow start.
An address listed by two endpoints is one host, owned by the first endpoint listing it
(Envoy would keep two host objects; the server can only name the address).
"""

from __future__ import annotations

import enum
import heapq
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from extproc.core.locality import endpoint_priorities
from extproc.core.outlier import OutlierDetector, OutlierEvent
from extproc.core.policy import LbAlgorithm, Locality, Resolution, Service
from extproc.core.priority import HostCounts, choose_priority, compute_priority_load

__all__ = ["ClusterState", "HostView", "OutlierEvent", "Pick", "PickReason"]

# Envoy's default least_request choice_count.
_CHOICE_COUNT = 2
# route_weights: a priority's load percent times this, split over its hosts.
_WEIGHT_SCALE = 1000


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
    weight: int
    active_requests: int = 0


class _EdfScheduler:
    """Earliest-deadline-first over hosts, as Envoy's ``EdfScheduler`` for unequal weights.

    Each host is queued with deadline ``now + 1/weight``; a pick pops the earliest (ties in
    queue order), moves ``now`` to it and re-queues the host with its current weight.
    """

    __slots__ = ("_heap", "_now", "_order")

    def __init__(self, hosts: Sequence[_Host], weight: Callable[[_Host], float]) -> None:
        self._heap: list[tuple[float, int, _Host]] = []
        self._now = 0.0
        self._order = 0
        for host in hosts:
            self._add(host, weight(host))

    def pick(self, weight: Callable[[_Host], float]) -> _Host:
        deadline, _, host = heapq.heappop(self._heap)
        self._now = deadline
        self._add(host, weight(host))
        return host

    def _add(self, host: _Host, weight: float) -> None:
        heapq.heappush(self._heap, (self._now + 1.0 / weight, self._order, host))
        self._order += 1


def _static_weight(host: _Host) -> float:
    return float(host.weight)


def _least_request_weight(host: _Host) -> float:
    # LeastRequestLoadBalancer::hostWeight with active_request_bias 1.0.
    return host.weight / (host.active_requests + 1)


def _host_address(ip: str, port: int) -> str:
    # Envoy's upstream_url form: IPv6 literals in brackets.
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


class ClusterState:
    """Hosts, outlier state and load balancing of one service for one workload locality.

    Every method that takes ``now`` first runs the outlier sweeps due by then, so the state
    is always the one Envoy would have at ``now``.
    """

    def __init__(
        self, service: Service, workload: Locality, *, now: float, rng: random.Random
    ) -> None:
        """Build the state; STATIC endpoints get their address as their only host.

        Args:
            service: The compiled service.
            workload: The client's locality; it decides the endpoint priorities.
            now: Creation time; outlier sweeps run at ``now + k*interval``.
            rng: Randomness for priority draws and host choices (seed it in tests).
        """
        self.service = service
        self._rng = rng
        self._cluster_name = service.cluster_name
        self._endpoint_priorities = endpoint_priorities(service, workload)
        self._num_priorities = max(self._endpoint_priorities, default=-1) + 1
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
        self._rr_indexes: dict[tuple[int, bool], int] = {}
        self._schedulers: dict[tuple[int, bool], _EdfScheduler] = {}
        self._equal_weights: dict[tuple[int, bool], bool] = {}
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

        Mirrors ``ZoneAwareLoadBalancerBase::chooseHost``: priority by load, then the
        healthy hosts of that priority, or all of them when it is in panic.
        """
        self.advance(now)
        if self._dirty:
            self._refresh()
        load = self._load
        if load.no_healthy_upstream:
            return Pick(host=None, priority=None, reason=PickReason.NO_HEALTHY_UPSTREAM)
        priority = choose_priority(load.loads, self._rng.randrange(100) + 1)
        panic = load.panic[priority]
        hosts = self._by_priority[priority] if panic else self._healthy_by_priority[priority]
        if not hosts:
            return Pick(host=None, priority=None, reason=PickReason.NO_HEALTHY_UPSTREAM)
        host = self._choose_host(priority, panic, hosts)
        host.active_requests += 1
        return Pick(
            host=host.address,
            priority=priority,
            reason=PickReason.PANIC if panic else PickReason.HEALTHY,
        )

    def record(self, host: str, code: int, now: float, *, finished: bool = True) -> None:
        """Count the outcome of one attempt on ``host`` and end it as an active request.

        Args:
            host: The ``ip:port`` that served the attempt; unknown hosts are ignored.
            code: The status as Envoy's outlier detector sees it (503 for a connect failure,
                reset or TLS failure, 504 for a timeout).
            now: When the outcome was seen.
            finished: False for an earlier attempt of a request that is still active on
                the same host (a retry), so its active-request count stays.
        """
        self.advance(now)
        entry = self._hosts.get(host)
        if entry is None:
            return
        if finished and entry.active_requests > 0:
            entry.active_requests -= 1
        if self._detector is not None and self._detector.put_http_response_code(host, code, now):
            self._dirty = True

    def release(self, host: str) -> None:
        """End a picked attempt that produced no outcome (the stream was aborted)."""
        entry = self._hosts.get(host)
        if entry is not None and entry.active_requests > 0:
            entry.active_requests -= 1

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

        Each priority's share of the load (Envoy's priority load, panic included) is split
        over that priority's eligible hosts (healthy ones, or all in panic) by endpoint
        weight, in parts per 100,000. A weighted draw over these entries picks a priority
        as ``choose_priority`` does and a host as RANDOM or ROUND_ROBIN do over many
        requests; LEAST_REQUEST's preference for idle hosts needs per-request counts and is
        not reproduced. Empty when nothing can serve (Envoy: no healthy upstream).
        """
        self.advance(now)
        if self._dirty:
            self._refresh()
        load = self._load
        if load.no_healthy_upstream:
            return ()
        entries: list[tuple[str, int]] = []
        for priority, share in enumerate(load.loads):
            if share <= 0:
                continue
            panic = load.panic[priority]
            hosts = self._by_priority[priority] if panic else self._healthy_by_priority[priority]
            total = sum(h.weight for h in hosts)
            entries.extend(
                (h.address, max(1, share * _WEIGHT_SCALE * h.weight // total)) for h in hosts
            )
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
            for ip in ips:
                address = _host_address(ip, endpoint.port)
                if address in hosts:
                    continue  # first endpoint listing an address owns it
                previous = old.get(address)
                hosts[address] = _Host(
                    address=address,
                    endpoint_index=index,
                    priority=self._endpoint_priorities[index],
                    weight=max(1, endpoint.weight),  # Istio treats weight 0 as 1
                    active_requests=0 if previous is None else previous.active_requests,
                )
        self._hosts = hosts
        groups: list[list[_Host]] = [[] for _ in range(self._num_priorities)]
        for host in sorted(hosts.values(), key=lambda h: (h.endpoint_index, h.address)):
            groups[host.priority].append(host)
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
        # Host lists changed: EDF schedules are rebuilt on demand (Envoy's refresh());
        # round-robin indexes survive, as Envoy's rr_indexes_ do.
        self._schedulers.clear()
        self._equal_weights.clear()
        self._dirty = False
        self._generation += 1

    def _choose_host(self, priority: int, panic: bool, hosts: list[_Host]) -> _Host:
        """Pick within one host source with the service's load balancer."""
        algorithm = self.service.lb_algorithm
        if algorithm is LbAlgorithm.RANDOM:
            return hosts[self._rng.randrange(len(hosts))]
        source = (priority, panic)
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
        source: tuple[int, bool],
        hosts: list[_Host],
        weight: Callable[[_Host], float],
    ) -> _EdfScheduler:
        scheduler = self._schedulers.get(source)
        if scheduler is None:
            scheduler = _EdfScheduler(hosts, weight)
            # Like Envoy's createWithPicks, start each schedule at a seed-dependent point so
            # different clusters do not all begin on the same host.
            for _ in range(self._seed % len(hosts)):
                scheduler.pick(weight)
            self._schedulers[source] = scheduler
        return scheduler
