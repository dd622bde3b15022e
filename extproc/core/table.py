"""Which service a request is for: the ``:authority`` lookup over every cluster's state."""

from __future__ import annotations

import random
from collections.abc import Iterator

from extproc.core.cluster import ClusterState
from extproc.core.policy import (
    DomainIndex,
    Policy,
    Workload,
    authority_key,
    route_domains,
)

#: Bound on remembered authority spellings (case, trailing dot, wildcard matches), so clients
#: cannot grow it.
_MAX_SPELLINGS = 1024


def split_authority(authority: str) -> tuple[str, int | None]:
    """``host[:port]`` -> (lower-case host without a trailing dot, port or None).

    A port is 1-5 ASCII digits: ``str.isdigit`` alone takes ``"\u00b2"`` and numbers of
    any length, which ``int`` refuses; such an authority names no port, so no service.
    """
    host, sep, port = authority.rpartition(":")
    if (
        sep
        and len(port) <= 5
        and port.isascii()
        and port.isdigit()
        and (host.endswith("]") or ":" not in host)
    ):
        return host.lower().rstrip("."), int(port)
    return authority.lower().rstrip("."), None


class ServiceTable:
    """Every service's ``ClusterState``, found by a request's authority.

    The lookup is the rendered routes' (``policy.route_domains`` and ``DomainIndex``): an
    exact host first, then the longest wildcard suffix (``*.example.com`` serves
    ``db.example.com``). A bare host (no port) means the host's port-80 service when there is
    one, else its first port, as an HTTP client on the default port would reach it.
    """

    def __init__(self, policy: Policy, workload: Workload, *, now: float, rng: random.Random):
        self.policy = policy
        self.workload = workload
        self.clusters: dict[str, ClusterState] = {}
        for service in policy.services:
            self.clusters[service.cluster_name] = ClusterState(service, workload, now=now, rng=rng)
        domains = [
            (self.clusters[service.cluster_name], names)
            for service, names in route_domains(policy.services)
        ]
        self._index = DomainIndex(domains)
        # Exact domains, then every spelling seen so far (case, trailing dot, wildcard hits).
        self._by_authority: dict[str, ClusterState] = {
            name: state for state, names in domains for name in names if not name.startswith("*")
        }

    def lookup(self, authority: str) -> ClusterState | None:
        """The cluster for an authority, or None when no ServiceEntry host matches."""
        state = self._by_authority.get(authority)
        if state is not None:
            return state
        state = self._index.find(authority_key(*split_authority(authority)))
        if state is not None and len(self._by_authority) < _MAX_SPELLINGS:
            # Remember the spelling we saw so the next lookup is one dict hit.
            self._by_authority[authority] = state
        return state

    def __iter__(self) -> Iterator[ClusterState]:
        return iter(self.clusters.values())
