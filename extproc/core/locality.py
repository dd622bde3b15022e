"""Locality priorities: which ServiceEntry endpoints a workload prefers, and in what order.

Theory of operation
-------------------
Istio does not give Envoy a fixed order of endpoints. Pilot computes, for each client proxy,
one Envoy *priority* per ``LocalityLbEndpoints`` from the proxy's own locality, so the same
ServiceEntry gives different orders to clients in different places. Two Istio functions decide:

* ``util.LbPriority`` (pilot/pkg/networking/util/util.go): the base tier, 0 when region, zone
  and sub-zone all match, 1 when region and zone match, 2 when only the region matches, 3
  otherwise. Missing parts are empty strings and compare equal to each other.
* ``applyLocalityFailover`` (pilot/pkg/networking/core/loadbalancer/loadbalancer.go): a tier-3
  endpoint drops to tier 4 when the first ``failover`` entry whose ``from`` is the client's
  region names another ``to`` region; then the tiers are renumbered 0..k-1 without gaps.

Failover only exists when the DestinationRule has ``outlierDetection`` and locality load
balancing is enabled (``ApplyToCluster``: ``enableFailover := Force || OutlierDetection != nil``;
``GetEffectiveLbSetting`` returns nothing for ``enabled: false``). Otherwise every endpoint is
priority 0, which is why the blog's first step sends traffic to both regions.

Units: priorities are small non-negative ints, 0 the most preferred.
"""

from __future__ import annotations

from extproc.core.policy import Locality, Service

# The tier ``applyLocalityFailover`` gives an endpoint outside the failover target region.
_OUTSIDE_FAILOVER_TARGET = 4


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


def endpoint_priorities(service: Service, workload: Locality) -> tuple[int, ...]:
    """Return the compacted Envoy priority of each of ``service.endpoints``, in config order.

    Mirrors Istio's ``applyLocalityFailover`` behind the gate of ``ApplyToCluster``. Istio
    works per LocalityLbEndpoints group; since every endpoint of one locality gets the same
    tier, computing it per endpoint gives the same result.

    Args:
        service: The compiled service (endpoints, outlier detection, locality settings).
        workload: The locality of the client this service answers for.

    Returns:
        One priority per endpoint; the distinct values are exactly 0..k-1.
    """
    if service.outlier_detection is None or not service.locality_lb.enabled:
        # ApplyToCluster: without outlier detection failover is unsafe (Envoy could not tell
        # a dead endpoint), so Istio emits a single priority.
        return tuple(0 for _ in service.endpoints)

    failover = service.locality_lb.failover
    raw: list[int] = []
    for endpoint in service.endpoints:
        # 1. Base tier from the shared locality prefix (util.LbPriority).
        priority = lb_priority(workload, endpoint.locality)
        # 2. A tier-3 endpoint is judged by the FIRST failover entry for the client's region;
        #    later entries with the same ``from`` are ignored (Istio breaks out of the loop).
        if priority == 3:
            for entry in failover:
                if entry.from_region == workload.region:
                    if endpoint.locality.region != entry.to_region:
                        priority = _OUTSIDE_FAILOVER_TARGET
                    break
        raw.append(priority)

    # 3. Envoy needs contiguous priorities: rank the distinct tiers and renumber 0..k-1.
    rank = {tier: index for index, tier in enumerate(sorted(set(raw)))}
    return tuple(rank[tier] for tier in raw)
