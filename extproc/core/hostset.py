"""Host membership of one cluster: hosts per priority and locality, healthy sets, priority load.

Envoy keeps this in ``PrioritySetImpl`` and one ``HostSetImpl`` per priority
(``source/common/upstream/upstream_impl.cc``); ``PrioritySet`` here is both:

* hosts: every resolved IP of every endpoint, as ``ip:port`` (Envoy STRICT_DNS: each A record
  is a host and inherits its endpoint's locality, priority and weight). Which IPs an answer
  gives is ``Resolution.host_ips`` (DNS_ROUND_ROBIN keeps the first); an endpoint needs no
  answer at all when ``fixed_ips`` says so (STATIC, or an IP literal);
* per priority its hosts, and per locality of that priority its hosts (``hostsPerLocality``),
  placed by ``locality.load_assignment`` (Istio's ``applyLocalityFailover``,
  ``applyFailoverPriorities`` and ``applyLocalityWeights``);
* the healthy subsets (hosts the outlier detector has not ejected), each locality's
  effective weight (``HostSetImpl::effectiveLocalityWeight``) and the priority load
  (``priority.compute_priority_load``), recomputed by ``refresh`` only when an ejection,
  un-ejection or membership change happens, never per request.

An address listed by two endpoints is one host, owned by the first endpoint listing it that
gets traffic (Envoy would keep two host objects; the server can only name the address).

Three host types, three jobs: ``Host`` is the mutable load-balancing identity (its active
requests) that only the core touches; ``HostView`` is the immutable snapshot readers get (the
status view, EDS); ``server.eds.EdsHost`` is what EDS tells Envoy, built from a ``HostView``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from extproc.core.locality import LoadAssignment
from extproc.core.policy import Locality, Resolution, Service, host_address, is_ip
from extproc.core.priority import (
    OVERPROVISIONING_FACTOR,
    HostCounts,
    PriorityLoad,
    compute_priority_load,
)

__all__ = [
    "Host",
    "HostView",
    "LocalityHosts",
    "PrioritySet",
    "effective_locality_weight",
    "fixed_ips",
]


def fixed_ips(resolution: Resolution, address: str) -> tuple[str, ...] | None:
    """The IPs an endpoint address stands for without DNS; None when it must be resolved.

    STATIC takes every address as it is; otherwise only an IP literal needs no answer, and
    it is its own one host (as Envoy's STRICT_DNS resolves a literal to itself).
    """
    if resolution is Resolution.STATIC or is_ip(address):
        return (address,)
    return None


@dataclass(slots=True, eq=False)
class Host:
    """A host's load-balancing identity; its outlier state lives in the detector."""

    address: str  # ``host_address(ip, port)``: the key of every per-host table
    ip: str
    port: int
    endpoint_index: int
    priority: int
    locality: int  # index into its priority's localities
    weight: int
    active_requests: int = 0


@dataclass(frozen=True, slots=True)
class HostView:
    """One host as the status view shows it (``istioctl pc endpoints`` with more detail)."""

    ip: str
    port: int
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

    @property
    def address(self) -> str:
        """``ip:port`` as Envoy's ``upstream_url`` writes it (``policy.host_address``)."""
        return host_address(self.ip, self.port)


@dataclass(slots=True, eq=False)
class LocalityHosts:
    """One locality of one priority: Envoy's ``hostsPerLocality`` entry and its weight."""

    index: int
    locality: Locality
    weight: int  # Istio's locality weight (sum of endpoint weights, or distribute's share)
    hosts: list[Host] = field(default_factory=list)
    healthy: list[Host] = field(default_factory=list)
    effective_weight: float = 0.0  # weight * availability, as of the last refresh


def effective_locality_weight(weight: int, healthy: int, total: int) -> float:
    """Envoy's ``HostSetImpl::effectiveLocalityWeight``: the weight scaled by availability.

    In floating point as Envoy computes it: ``weight * min(1, 1.4 * healthy / total)``; a
    locality without hosts weighs 0.
    """
    if total == 0:
        return 0.0
    return weight * min(1.0, (OVERPROVISIONING_FACTOR / 100.0) * (healthy / total))


class PrioritySet:
    """The hosts of one cluster for one workload, by priority and locality.

    Membership changes (``set_endpoint_ips``, ``carry_over``) rebuild the host lists at once;
    health changes take effect at the next ``refresh``, which the owner calls when it knows
    an ejection or un-ejection happened.
    """

    __slots__ = (
        "_panic_threshold",
        "_placement",
        "by_priority",
        "endpoint_ips",
        "healthy_by_priority",
        "hosts",
        "load",
        "localities",
        "num_priorities",
        "service",
    )

    def __init__(self, service: Service, assignment: LoadAssignment, panic_threshold: int):
        self.service = service
        self.num_priorities = assignment.num_priorities
        self._panic_threshold = panic_threshold
        # Per priority, its localities in Envoy's order; per endpoint, (priority, locality)
        # or None when Istio sends it no traffic (distribute left its locality out).
        self.localities: list[list[LocalityHosts]] = [[] for _ in range(self.num_priorities)]
        placement: dict[int, tuple[int, int]] = {}
        for group in assignment.groups:
            localities = self.localities[group.priority]
            localities.append(LocalityHosts(len(localities), group.locality, group.weight))
            for index in group.endpoints:
                placement[index] = (group.priority, len(localities) - 1)
        self._placement = tuple(placement.get(i) for i in range(len(service.endpoints)))
        self.endpoint_ips: list[tuple[str, ...]] = [() for _ in service.endpoints]
        self.hosts: dict[str, Host] = {}
        self.by_priority: list[list[Host]] = [[] for _ in range(self.num_priorities)]
        self.healthy_by_priority: list[list[Host]] = [[] for _ in range(self.num_priorities)]
        self.load: PriorityLoad = compute_priority_load([], 0)

    def set_endpoint_ips(self, endpoint_index: int, ips: Sequence[str]) -> bool:
        """Make one endpoint's hosts the ones an answer with ``ips`` gives.

        Returns:
            True when the membership changed (and was rebuilt).
        """
        new = self.service.resolution.host_ips(ips)
        if new == self.endpoint_ips[endpoint_index]:
            return False
        self.endpoint_ips[endpoint_index] = new
        self.rebuild()
        return True

    def set_fixed_endpoints(self) -> bool:
        """Give every endpoint that needs no DNS (``fixed_ips``) its addresses.

        Returns:
            True when the membership changed.
        """
        changed = False
        for index, endpoint in enumerate(self.service.endpoints):
            ips = fixed_ips(self.service.resolution, endpoint.address)
            if ips is not None and ips != self.endpoint_ips[index]:
                self.endpoint_ips[index] = ips
                changed = True
        if changed:
            self.rebuild()
        return changed

    def carry_over(self, old: PrioritySet) -> None:
        """Take the resolved addresses and active requests of ``old`` (a reload's).

        1. A DNS endpoint whose name ``old`` had resolved, and that has no address yet,
           starts with those IPs (as ``host_ips`` keeps them), so the reload empties no
           endpoint while its name is being resolved again.
        2. Every host (``ip:port``) that stays keeps its active requests.
        """
        if self.service.resolution is not Resolution.STATIC:
            resolved: dict[str, tuple[str, ...]] = {}
            for endpoint, ips in zip(old.service.endpoints, old.endpoint_ips, strict=True):
                if ips:
                    resolved.setdefault(endpoint.address, ips)
            for index, endpoint in enumerate(self.service.endpoints):
                ips = self.service.resolution.host_ips(resolved.get(endpoint.address, ()))
                if ips and not self.endpoint_ips[index]:
                    self.endpoint_ips[index] = ips
            self.rebuild()
        for address, host in self.hosts.items():
            previous = old.hosts.get(address)
            if previous is not None:
                host.active_requests = previous.active_requests

    def rebuild(self) -> None:
        """Recompute the host table from the endpoints' resolved IPs (membership change).

        Hosts that stay keep their active requests; healthy sets wait for ``refresh``.
        """
        old = self.hosts
        hosts: dict[str, Host] = {}
        for index, ips in enumerate(self.endpoint_ips):
            endpoint = self.service.endpoints[index]
            placement = self._placement[index]
            if placement is None:
                continue  # Istio sends this endpoint no traffic: Envoy never sees it
            for ip in ips:
                address = host_address(ip, endpoint.port)
                if address in hosts:
                    continue  # first endpoint listing an address owns it
                previous = old.get(address)
                hosts[address] = Host(
                    address=address,
                    ip=ip,
                    port=endpoint.port,
                    endpoint_index=index,
                    priority=placement[0],
                    locality=placement[1],
                    weight=max(1, endpoint.weight),  # Istio treats weight 0 as 1
                    active_requests=0 if previous is None else previous.active_requests,
                )
        self.hosts = hosts
        groups: list[list[Host]] = [[] for _ in range(self.num_priorities)]
        for localities in self.localities:
            for loc in localities:
                loc.hosts = []
        for host in sorted(hosts.values(), key=lambda h: (h.endpoint_index, h.address)):
            groups[host.priority].append(host)
            self.localities[host.priority][host.locality].hosts.append(host)
        self.by_priority = groups

    def refresh(self, is_ejected: Callable[[str], bool] | None) -> None:
        """Recompute healthy sets, effective locality weights and the priority load.

        Args:
            is_ejected: The outlier detector's verdict per address; None when the cluster
                has no outlier detection (every host is healthy).
        """
        healthy = [
            [h for h in group if is_ejected is None or not is_ejected(h.address)]
            for group in self.by_priority
        ]
        self.healthy_by_priority = healthy
        self.load = compute_priority_load(
            [
                HostCounts(healthy=len(ok), total=len(group))
                for ok, group in zip(healthy, self.by_priority, strict=True)
            ],
            self._panic_threshold,
        )
        for localities in self.localities:
            for loc in localities:
                loc.healthy = [
                    h for h in loc.hosts if is_ejected is None or not is_ejected(h.address)
                ]
                loc.effective_weight = effective_locality_weight(
                    loc.weight, len(loc.healthy), len(loc.hosts)
                )
