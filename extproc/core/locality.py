"""Locality load balancing: which endpoints a workload prefers, in what order, with what weight.

Theory of operation
-------------------
Istio does not give Envoy a fixed order of endpoints. For each client proxy, pilot turns the
endpoints into Envoy ``LocalityLbEndpoints``: one group per locality, each with a priority
and a weight, computed from the proxy's own locality and labels. The same ServiceEntry
therefore gives different answers to clients in different places. In pilot's order:

1. Groups (``endpoint_builder.go`` ``generate``): one group per endpoint locality, priority
   0, weight = the sum of its endpoints' weights (weight 0 counts as 1).
2. Gate (``loadbalancer.go`` ``GetLocalityLbSetting``; ``ApplyLocalityLoadBalancer``):
   ``enabled: false`` switches everything below off. ``enableFailover`` is true when the
   DestinationRule has ``outlierDetection``. Then exactly one of:

   a. ``distribute`` (``applyLocalityWeights``): the first rule whose ``from`` matches the
      workload locality (``util.LocalityMatch``: ``*`` and empty zone/subzone match
      anything) wins. For each ``to`` pattern, in order, the groups it matches that no
      earlier pattern claimed get weight ``ceil(orig * w / sum_orig)`` (``orig`` their own
      weight, ``sum_orig`` over the groups this pattern claimed). Groups no pattern claims
      lose every endpoint: they receive nothing, not even as a failover target. Everything
      stays priority 0. No rule matches: nothing changes.
   b. with ``enableFailover`` and ``failoverPriority`` (``applyFailoverPriorities``): each
      group is split by endpoint priority (weights re-summed), then the priorities are
      compacted; ``failover``, when also set, then applies as in (c) on top. Skipped
      entirely when the proxy has no labels.
   c. with ``enableFailover`` otherwise (``applyLocalityFailover``, even with an empty
      ``failover`` list): priority = previous priority * 5 + the tier of ``util.LbPriority``
      (0 same region/zone/subzone, 1 same region and zone, 2 same region, 3 otherwise), a
      tier 3 becoming 4 when the first ``failover`` entry whose ``from`` is the client region
      names another ``to``. Then compacted to 0..k-1.

3. ``common_lb_config.locality_weighted_lb_config`` is set when ``distribute`` is set, or
   ``enableFailover`` and ``failover`` or ``failoverPriority`` is set (``cluster_builder.go``
   ``applyLocalityLoadBalancer``): Envoy then picks a locality by weight inside the chosen
   priority (see ``cluster.py``).

An endpoint's ``failoverPriority`` priority, for N labels (``key`` compares the proxy's value,
``key=value`` compares ``value``): 0 when all N match, else ``N - j`` for the first mismatch
``j``; a label missing on both sides matches. When label 0 is ``topology.istio.io/network``,
a network mismatch adds N and the comparison goes on (istio/istio#60829): every endpoint of
the proxy's network comes before every other one. Labels are the endpoint's labels plus the
topology labels Istio adds (``serviceregistry/util/label`` ``AugmentLabels``).

Units: priorities are small non-negative ints, 0 the most preferred; weights are Envoy's
integer locality weights.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from extproc.core.policy import (
    DEFAULT_CLUSTER_ID,
    Distribute,
    Endpoint,
    Failover,
    Locality,
    Service,
    Workload,
)

__all__ = [
    "LABEL_CLUSTER",
    "LABEL_NETWORK",
    "LABEL_REGION",
    "LABEL_SUBZONE",
    "LABEL_ZONE",
    "SERVICE_ENTRY_CLUSTER_ID",
    "LoadAssignment",
    "LocalityGroup",
    "augment_labels",
    "endpoint_labels",
    "endpoint_priorities",
    "failover_priority",
    "lb_priority",
    "load_assignment",
    "locality_match",
    "workload_labels",
]

# pilot/pkg/serviceregistry/util/label/label.go and istio.io/api/label.
LABEL_REGION: Final = "topology.kubernetes.io/region"
LABEL_ZONE: Final = "topology.kubernetes.io/zone"
LABEL_SUBZONE: Final = "topology.istio.io/subzone"
LABEL_NETWORK: Final = "topology.istio.io/network"
LABEL_CLUSTER: Final = "topology.istio.io/cluster"

#: The cluster ID Istio gives ServiceEntry endpoints: istiod's own ``CLUSTER_ID``
#: (``serviceentry/conversion.go`` ``convertServiceEntryToInstances``), by default
#: ``Kubernetes``.
SERVICE_ENTRY_CLUSTER_ID: Final = DEFAULT_CLUSTER_ID

# The tier ``applyLocalityFailover`` gives an endpoint outside the failover target region.
_OUTSIDE_FAILOVER_TARGET: Final = 4
# applyLocalityFailover composes with an earlier priority as ``priority * 5 + tier``.
_TIERS: Final = 5


@dataclass(frozen=True, slots=True)
class LocalityGroup:
    """One ``LocalityLbEndpoints`` as pilot sends it to this workload's Envoy."""

    locality: Locality
    priority: int
    weight: int  # Envoy's locality weight (load_balancing_weight)
    endpoints: tuple[int, ...]  # indexes into ``Service.endpoints``, in config order


@dataclass(frozen=True, slots=True)
class LoadAssignment:
    """The endpoint groups of one cluster for one workload, and how Envoy balances them."""

    groups: tuple[LocalityGroup, ...]  # by priority, then Envoy's locality order
    locality_weighted: bool  # Envoy's ``locality_weighted_lb_config`` is set

    @property
    def num_priorities(self) -> int:
        return max((g.priority for g in self.groups), default=-1) + 1

    def endpoint_groups(self, count: int) -> tuple[LocalityGroup | None, ...]:
        """The group of each of ``count`` endpoints; None for one that gets no traffic."""
        by_endpoint: list[LocalityGroup | None] = [None] * count
        for group in self.groups:
            for index in group.endpoints:
                by_endpoint[index] = group
        return tuple(by_endpoint)


def lb_priority(workload: Locality, endpoint: Locality) -> int:
    """Return the base priority tier of ``endpoint`` as seen from ``workload``.

    Mirrors Istio's ``util.LbPriority``: the longer the shared prefix of
    region/zone/sub-zone, the more preferred the endpoint.

    Args:
        workload: The client proxy's locality (empty parts when unknown).
        endpoint: The endpoint's locality.

    Returns:
        0, 1, 2 or 3.
    """
    if workload.region != endpoint.region:
        return 3
    if workload.zone != endpoint.zone:
        return 2
    if workload.sub_zone != endpoint.sub_zone:
        return 1
    return 0


def locality_match(locality: Locality, pattern: str) -> bool:
    """Whether ``locality`` matches a ``distribute`` pattern (Istio's ``util.LocalityMatch``).

    The pattern splits like a locality label; ``*`` matches any value, and an empty zone or
    subzone in the pattern matches any zone or subzone. The region must be given.
    """
    rule = Locality.parse(pattern)
    return (
        (rule.region == "*" or locality.region == rule.region)
        and (rule.zone in ("*", "") or locality.zone == rule.zone)
        and (rule.sub_zone in ("*", "") or locality.sub_zone == rule.sub_zone)
    )


def augment_labels(
    labels: Iterable[tuple[str, str]], cluster_id: str, locality: Locality, network: str
) -> dict[str, str]:
    """Return ``labels`` plus Istio's topology labels (``label.AugmentLabels``).

    Region, zone, subzone and cluster overwrite what the labels say when they are known; the
    network is added only when the labels do not name one already.
    """
    out = dict(labels)
    if locality.region:
        out[LABEL_REGION] = locality.region
    if locality.zone:
        out[LABEL_ZONE] = locality.zone
    if locality.sub_zone:
        out[LABEL_SUBZONE] = locality.sub_zone
    if cluster_id:
        out[LABEL_CLUSTER] = cluster_id
    if network and not out.get(LABEL_NETWORK):
        out[LABEL_NETWORK] = network
    return out


def endpoint_labels(endpoint: Endpoint) -> dict[str, str]:
    """An endpoint's labels as ``failoverPriority`` sees them.

    Mirrors ``serviceentry/conversion.go`` ``convertEndpoint``: the WorkloadEntry's labels,
    augmented with its locality, its ``network`` and istiod's cluster ID.
    """
    return augment_labels(
        endpoint.labels, SERVICE_ENTRY_CLUSTER_ID, endpoint.locality, endpoint.network
    )


def workload_labels(workload: Workload) -> dict[str, str]:
    """The proxy's labels as ``failoverPriority`` sees them.

    Mirrors pilot's ``initProxyMetadata``: the proxy's labels augmented with its locality and
    cluster ID; its network is its ``topology.istio.io/network`` label. Only a workload with
    neither labels, locality nor cluster ID has none.
    """
    return augment_labels(workload.labels, workload.cluster_id, workload.locality, "")


def _priority_labels(failover_priority: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """Split ``key`` / ``key=value`` entries (``priorityLabelOverrides``).

    Like Istio, an entry with more than one ``=`` keeps only its key and no value.
    """
    keys: list[str] = []
    overrides: dict[str, str] = {}
    for entry in failover_priority:
        parts = entry.split("=")
        keys.append(parts[0])
        if len(parts) == 2:
            overrides[parts[0]] = parts[1]
    return keys, overrides


def failover_priority(
    failover_priority: Sequence[str],
    proxy_labels: Mapping[str, str],
    endpoint_labels: Mapping[str, str],
) -> int:
    """Return one endpoint's raw ``failoverPriority`` priority (before compaction).

    Mirrors ``applyFailoverPriorityPerLocality``, with the network rule of
    istio/istio#60829 (see the module docstring).
    """
    keys, overrides = _priority_labels(failover_priority)
    lowest = len(keys)
    priority = 0
    for j, key in enumerate(keys):
        wanted = overrides[key] if key in overrides else proxy_labels.get(key, "")
        if wanted == endpoint_labels.get(key, ""):
            continue
        if j == 0 and key == LABEL_NETWORK:
            # Another network: below every endpoint of the proxy's network, and ranked
            # among the other networks' endpoints by the remaining labels.
            priority += lowest
            continue
        priority += lowest - j
        break
    return priority


@dataclass(slots=True)
class _Group:
    """A LocalityLbEndpoints while pilot's steps rewrite it."""

    locality: Locality
    priority: int
    weight: int
    endpoints: list[int] = field(default_factory=list)


def _weight(endpoint: Endpoint) -> int:
    return max(1, endpoint.weight)  # model.GetLoadBalancingWeight: 0 means 1


def _generate(endpoints: Sequence[Endpoint]) -> list[_Group]:
    """Step 1: one group per locality, weight = the sum of its endpoint weights."""
    groups: dict[Locality, _Group] = {}
    for index, endpoint in enumerate(endpoints):
        group = groups.setdefault(endpoint.locality, _Group(endpoint.locality, 0, 0))
        group.endpoints.append(index)
        group.weight += _weight(endpoint)
    return list(groups.values())


def _compact(groups: list[_Group]) -> None:
    """Renumber priorities 0..k-1 in order, without gaps (Envoy needs contiguous ones)."""
    rank = {p: i for i, p in enumerate(sorted({g.priority for g in groups}))}
    for group in groups:
        group.priority = rank[group.priority]


def _apply_locality_weights(
    workload: Locality, groups: list[_Group], distribute: Sequence[Distribute]
) -> None:
    """Step 2a: ``applyLocalityWeights``."""
    for rule in distribute:
        if not locality_match(workload, rule.from_locality):
            continue
        unclaimed = list(range(len(groups)))
        for pattern, weight in rule.to:
            # 1. The groups this pattern matches, among those no earlier pattern claimed.
            claimed = [i for i in unclaimed if locality_match(groups[i].locality, pattern)]
            unclaimed = [i for i in unclaimed if i not in claimed]
            # 2. Their share of ``weight``, in proportion to their own weights, rounded up.
            total = sum(groups[i].weight for i in claimed)
            for i in claimed:
                groups[i].weight = -(-groups[i].weight * weight // total)
        # 3. Groups no pattern claimed lose their endpoints: they never receive traffic.
        for i in unclaimed:
            groups[i].endpoints = []
        return  # the first matching rule wins


def _apply_failover_priorities(
    groups: list[_Group],
    endpoints: Sequence[Endpoint],
    proxy_labels: Mapping[str, str],
    priority_labels: Sequence[str],
) -> list[_Group]:
    """Step 2b: ``applyFailoverPriorities``: split each group by endpoint priority."""
    if not proxy_labels or not groups:
        return groups
    out: list[_Group] = []
    for group in groups:
        by_priority: dict[int, list[int]] = {}
        for index in group.endpoints:
            labels = endpoint_labels(endpoints[index])
            priority = failover_priority(priority_labels, proxy_labels, labels)
            by_priority.setdefault(priority, []).append(index)
        for priority in sorted(by_priority):
            members = by_priority[priority]
            weight = sum(_weight(endpoints[i]) for i in members)
            out.append(_Group(group.locality, priority, weight, members))
    _compact(out)
    return out


def _apply_locality_failover(
    workload: Locality, groups: list[_Group], failover: Sequence[Failover]
) -> None:
    """Step 2c: ``applyLocalityFailover``."""
    for group in groups:
        # 1. Base tier from the shared locality prefix (util.LbPriority).
        tier = lb_priority(workload, group.locality)
        # 2. A tier-3 group is judged by the FIRST failover entry for the client's region;
        #    later entries with the same ``from`` are ignored (Istio breaks out of the loop).
        if tier == 3:
            for entry in failover:
                if entry.from_region == workload.region:
                    if group.locality.region != entry.to_region:
                        tier = _OUTSIDE_FAILOVER_TARGET
                    break
        # 3. Keep what failoverPriority decided: at most 5 tiers fit under each priority.
        group.priority = group.priority * _TIERS + tier
    _compact(groups)


def load_assignment(service: Service, workload: Workload) -> LoadAssignment:
    """Return the groups pilot sends for ``service`` to ``workload``, as Envoy orders them.

    Args:
        service: The compiled service (endpoints, outlier detection, locality settings).
        workload: The client this service answers for.

    Returns:
        Groups sorted by priority, then by locality as Envoy's ``LocalityLess`` orders them
        (region, zone, subzone); groups left without endpoints are omitted. Priorities are
        exactly 0..k-1.
    """
    setting = service.locality_lb
    groups = _generate(service.endpoints)
    locality_weighted = False
    if setting.enabled:
        enable_failover = service.outlier_detection is not None
        locality_weighted = bool(setting.distribute) or (
            enable_failover and bool(setting.failover or setting.failover_priority)
        )
        if setting.distribute:
            _apply_locality_weights(workload.locality, groups, setting.distribute)
        elif enable_failover:
            # Without outlier detection failover is unsafe (Envoy could not tell a dead
            # endpoint), so Istio leaves a single priority.
            if setting.failover_priority:
                groups = _apply_failover_priorities(
                    groups,
                    service.endpoints,
                    workload_labels(workload),
                    setting.failover_priority,
                )
                if setting.failover:
                    _apply_locality_failover(workload.locality, groups, setting.failover)
            else:
                _apply_locality_failover(workload.locality, groups, setting.failover)
    kept = [g for g in groups if g.endpoints]
    kept.sort(key=lambda g: (g.priority, g.locality.region, g.locality.zone, g.locality.sub_zone))
    return LoadAssignment(
        groups=tuple(
            LocalityGroup(g.locality, g.priority, g.weight, tuple(g.endpoints)) for g in kept
        ),
        locality_weighted=locality_weighted,
    )


def endpoint_priorities(service: Service, workload: Workload) -> tuple[int | None, ...]:
    """Return the Envoy priority of each of ``service.endpoints``, in config order.

    None marks an endpoint that gets no traffic at all (``distribute`` left its locality
    out). The other values are exactly 0..k-1.
    """
    assignment = load_assignment(service, workload)
    return tuple(
        None if group is None else group.priority
        for group in assignment.endpoint_groups(len(service.endpoints))
    )
