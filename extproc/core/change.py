"""What a new policy changes: the services it adds, removes or changes, and its new DNS names.

A config reload (``server/reload.py``, ``ServiceApp.apply_policy``) asks these pure questions
of the old table and the new policy; the adapters do the DNS queries and the swap.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from extproc.core.cluster import ClusterState
from extproc.core.hostset import fixed_ips
from extproc.core.policy import Policy, Resolution
from extproc.core.table import ServiceTable

__all__ = ["PolicyChange", "fill_new_endpoints", "new_dns_names", "policy_change"]


@dataclass(frozen=True, slots=True)
class PolicyChange:
    """Which services (cluster names) a new policy adds, removes or changes."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    # Nothing differs in what is served (same services, same order): nothing was swapped.
    unchanged: bool = False
    envoy_restarted: bool = False  # ``extproc up`` hot-restarted Envoy for it


def policy_change(old: Policy, new: Policy) -> PolicyChange:
    """Compare two policies service by service (warnings do not count)."""
    if old.services == new.services:
        return PolicyChange(unchanged=True)
    before = {s.cluster_name: s for s in old.services}
    after = {s.cluster_name: s for s in new.services}
    return PolicyChange(
        added=tuple(name for name in after if name not in before),
        removed=tuple(name for name in before if name not in after),
        changed=tuple(name for name in after if name in before and before[name] != after[name]),
    )


def _known_addresses(old: ServiceTable, cluster_name: str) -> set[str]:
    """The endpoint addresses the old table's cluster of that name had (none if new)."""
    before = old.clusters.get(cluster_name)
    return {e.address for e in before.service.endpoints} if before is not None else set()


def new_dns_names(old: ServiceTable, policy: Policy) -> set[str]:
    """DNS names of endpoints the carry-over cannot fill: new to their cluster."""
    names: set[str] = set()
    for service in policy.services:
        if service.resolution is Resolution.STATIC:
            continue
        known = _known_addresses(old, service.cluster_name)
        names.update(
            e.address
            for e in service.endpoints
            if e.address not in known and fixed_ips(service.resolution, e.address) is None
        )
    return names


def fill_new_endpoints(
    cluster: ClusterState,
    old: ServiceTable,
    resolved: Mapping[str, Sequence[str]],
    now: float,
) -> None:
    """Give endpoints new to their cluster the addresses resolved for the reload.

    Args:
        cluster: A cluster of the new table, already carried over from ``old``.
        old: The table the reload replaces.
        resolved: The IPs of each name that answered (NXDOMAIN: none); a name missing
            here is left for the DNS refresh after the swap.
        now: The reload time.
    """
    service = cluster.service
    if service.resolution is Resolution.STATIC:
        return
    known = _known_addresses(old, service.cluster_name)
    for index, endpoint in enumerate(service.endpoints):
        if endpoint.address in known:
            continue
        ips: Sequence[str] | None = fixed_ips(service.resolution, endpoint.address)
        if ips is None:
            ips = resolved.get(endpoint.address)  # None: the DNS refresh after the swap
        if ips is not None:
            cluster.set_endpoint_addresses(index, ips, now)
