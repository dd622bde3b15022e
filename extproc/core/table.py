"""Which service a request is for: the ``:authority`` lookup over every cluster's state."""

from __future__ import annotations

import random
from collections.abc import Iterator

from extproc.core.cluster import ClusterState
from extproc.core.policy import Locality, Policy

#: Bound on remembered authority spellings (case, trailing dot), so clients cannot grow it.
_MAX_SPELLINGS = 1024


def split_authority(authority: str) -> tuple[str, int | None]:
    """``host[:port]`` -> (lower-case host without a trailing dot, port or None)."""
    host, sep, port = authority.rpartition(":")
    if sep and port.isdigit() and (host.endswith("]") or ":" not in host):
        return host.lower().rstrip("."), int(port)
    return authority.lower().rstrip("."), None


class ServiceTable:
    """Every service's ``ClusterState``, found by a request's authority.

    A bare host (no port) means the service's port 80 when there is one, else its first
    port, as an HTTP client on the default port would reach it.
    """

    def __init__(self, policy: Policy, workload: Locality, *, now: float, rng: random.Random):
        self.policy = policy
        self.workload = workload
        self.clusters: dict[str, ClusterState] = {}
        self._by_authority: dict[str, ClusterState] = {}
        for service in policy.services:
            state = ClusterState(service, workload, now=now, rng=rng)
            self.clusters[service.cluster_name] = state
            self._by_authority[f"{service.host}:{service.port}"] = state
        for service in policy.services:
            bare = service.host
            current = self._by_authority.get(bare)
            if current is None or (service.port == 80 and current.service.port != 80):
                self._by_authority[bare] = self.clusters[service.cluster_name]

    def lookup(self, authority: str) -> ClusterState | None:
        """The cluster for an authority, or None when no ServiceEntry host matches."""
        state = self._by_authority.get(authority)
        if state is not None:
            return state
        host, port = split_authority(authority)
        key = host if port is None else f"{host}:{port}"
        state = self._by_authority.get(key)
        if state is not None and len(self._by_authority) < _MAX_SPELLINGS:
            # Remember the spelling we saw so the next lookup is one dict hit.
            self._by_authority[authority] = state
        return state

    def __iter__(self) -> Iterator[ClusterState]:
        return iter(self.clusters.values())
