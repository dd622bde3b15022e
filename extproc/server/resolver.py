"""Resolve ServiceEntry endpoint hostnames the way Istio's STRICT_DNS cluster does.

Each A record of an endpoint's hostname becomes one host (``ip:port``) with the endpoint's
locality, priority and weight; outlier state is per host, so an IP keeps its state while it
stays in the answer (Envoy ``StrictDnsClusterImpl``; "Strict DNS" in Envoy's service discovery
docs, https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/upstream/service_discovery).

Refresh follows Envoy with Istio's settings (``respect_dns_ttl: true``, mesh
``dnsRefreshRate`` 60 s): the next query is due after the answer's TTL (at least 1 s), or
after the refresh rate when the TTL is 0. NXDOMAIN or an empty answer removes the hosts
(the endpoint's priority may become empty, and traffic moves on without any ejection);
a timeout or server failure keeps the last good answer and retries sooner.

Resolution DNS_ROUND_ROBIN is Envoy's LOGICAL_DNS (pilot ``convertResolution``): one host per
endpoint, the first address of each answer (``LogicalDnsCluster`` connects to the first
address only). Envoy keeps one logical host whose address changes; here the host is the
``ip:port``, so when a refresh puts another address first, that address starts with fresh
outlier state (Envoy's logical host would keep its state).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.resolver
import structlog

from extproc.core.cluster import ClusterState

log = structlog.get_logger(__name__)

DNS_REFRESH_RATE_S = 60.0  # Istio mesh default dnsRefreshRate
_MIN_REFRESH_S = 1.0
_FAILURE_RETRY_S = 5.0


@dataclass(frozen=True, slots=True)
class Answer:
    """One resolution: the addresses (possibly none) and when to ask again."""

    ips: tuple[str, ...]
    refresh_s: float
    ok: bool  # False: the resolver failed; keep the last answer


def make_resolver(
    nameserver: tuple[str, int] | None, timeout_s: float = 2.0
) -> dns.asyncresolver.Resolver:
    """A dnspython async resolver, pointed at ``nameserver`` when given."""
    if nameserver is None:
        resolver = dns.asyncresolver.Resolver()
    else:
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = [nameserver[0]]
        resolver.port = nameserver[1]
    resolver.lifetime = timeout_s
    resolver.timeout = timeout_s
    resolver.cache = None  # every refresh asks the server, as Envoy's c-ares does
    return resolver


async def resolve(resolver: dns.asyncresolver.Resolver, name: str) -> Answer:
    """Look up A records of ``name``."""
    try:
        answer = await resolver.resolve(name, "A", search=False)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return Answer((), DNS_REFRESH_RATE_S, ok=True)
    except (dns.exception.DNSException, OSError) as exc:
        log.warning("dns.failure", name=name, error=str(exc) or type(exc).__name__)
        return Answer((), _FAILURE_RETRY_S, ok=False)
    ttl = float(answer.rrset.ttl) if answer.rrset is not None else 0.0
    refresh = max(_MIN_REFRESH_S, ttl) if ttl > 0 else DNS_REFRESH_RATE_S
    return Answer(tuple(rr.address for rr in answer), refresh, ok=True)


class EndpointResolver:
    """Keeps every DNS endpoint of every cluster resolved until stopped."""

    def __init__(
        self,
        clusters: Callable[[], list[ClusterState]],
        resolver: dns.asyncresolver.Resolver,
        now: Callable[[], float],
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self._clusters = clusters
        self._resolver = resolver
        self._now = now
        self._on_change = on_change
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        # Names the DNS server has answered at least once (NXDOMAIN is an answer).
        self._answered: set[str] = set()

    def answered(self, name: str) -> None:
        """Count an answer obtained elsewhere (a reload resolves new names itself)."""
        self._answered.add(name)

    def cluster_answered(self, cluster: ClusterState) -> bool:
        """Whether every DNS endpoint of ``cluster`` has had an answer (NXDOMAIN counts).

        Until then the cluster's hosts are not the truth yet: a name that never answered
        has no host, so its endpoint's priority looks empty.
        """
        return all(name in self._answered for name in cluster.dns_names)

    def all_answered(self) -> bool:
        """Whether every DNS endpoint of every cluster has had an answer: readiness."""
        return all(self.cluster_answered(cluster) for cluster in self._clusters())

    def set_ip_endpoints(self) -> None:
        """Give every endpoint written as an IP its one address; no DNS, nothing awaited.

        Call it before anything can read the hosts (the first sync, the first EDS push), so
        an endpoint that needs no answer is never shown empty.
        """
        for cluster in self._clusters():
            cluster.set_ip_endpoints(self._now())

    async def resolve_all(self) -> None:
        """Resolve every endpoint once (start-up readiness), then keep them fresh."""
        self.set_ip_endpoints()
        names = sorted({name for cluster in self._clusters() for name in cluster.dns_names})
        answers = await asyncio.gather(*(resolve(self._resolver, name) for name in names))
        for name, answer in zip(names, answers, strict=True):
            self._apply(name, answer, notify=False)
            self._tasks.append(asyncio.create_task(self._refresh_loop(name, answer.refresh_s)))
        self._on_change()  # once, with every first answer in

    def _apply(self, name: str, answer: Answer, *, notify: bool = True) -> None:
        """Give every endpoint with this name, in every cluster, the answer's addresses.

        One query per name: the endpoints that share it (a ServiceEntry with two ports is
        two clusters) get an answer together, so none is published while another that
        counts as answered still has no host.
        """
        if not answer.ok:
            return
        self._answered.add(name)
        for cluster in self._clusters():
            for index, endpoint in enumerate(cluster.service.endpoints):
                if endpoint.address == name:
                    cluster.set_endpoint_addresses(index, answer.ips, self._now())
        if notify:
            self._on_change()
        log.debug("dns.resolved", name=name, ips=answer.ips)

    async def _refresh_loop(self, name: str, delay_s: float) -> None:
        while not self._stopping:
            await asyncio.sleep(delay_s)
            answer = await resolve(self._resolver, name)
            self._apply(name, answer)
            delay_s = answer.refresh_s

    async def stop(self) -> None:
        """End the refresh loops; they can be started again with ``resolve_all``.

        dnspython times its queries with ``asyncio.wait_for``, which on Python 3.11 can
        swallow a cancellation that lands as the answer arrives (CPython gh-86296); the
        loop then sleeps on. So the loops also check a flag, and a loop still running is
        cancelled again until it ends.
        """
        self._stopping = True
        tasks, self._tasks = self._tasks, []
        while tasks:
            for task in tasks:
                task.cancel()
            _, pending = await asyncio.wait(tasks, timeout=0.5)
            tasks = list(pending)
        self._stopping = False
