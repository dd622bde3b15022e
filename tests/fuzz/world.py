"""The services the protocol fuzz tests run against, and the host names they mix in.

Three services, so a report or a stream can name another service's host: ``mydb.com`` (the
seed's shape, with ``outlierDetectionHttpErrorCodes`` so tables carry a ``codes=`` line and
an IPv6 endpoint), ``other.com:8080`` (split local-origin errors) and a DNS service with
LEAST_REQUEST (active requests matter there). Ejections are quick (two errors, 1 s), so
a short sequence of reports drains a priority and reaches panic and no healthy upstream.
"""

from __future__ import annotations

import random
from dataclasses import replace

from extproc.core.policy import LbAlgorithm, Locality, Policy, Resolution, Workload
from extproc.core.table import ServiceTable
from extproc.testing import FakeClock, endpoint, outlier, service

_QUICK = outlier(
    consecutive_5xx_errors=2, interval_s=1.0, base_ejection_time_s=1.0, max_ejection_percent=100
)
SERVICES = (
    service(
        endpoints=[
            endpoint("10.0.0.1", "us-east1"),
            endpoint("10.0.0.2", "us-west"),
            endpoint("2001:db8::1", "us-west"),
        ],
        outlier=replace(_QUICK, http_error_codes=frozenset({429, 503})),
    ),
    service(
        endpoints=[endpoint("10.0.1.1", "us-east1", port=8443), endpoint("10.0.1.2", "us-east1")],
        outlier=replace(
            _QUICK, split_external_local_origin_errors=True, consecutive_local_origin_failures=1
        ),
        host="other.com",
        port=8080,
    ),
    service(
        endpoints=[endpoint("db.example.com", "us-east1")],
        outlier=_QUICK,
        lb=LbAlgorithm.LEAST_REQUEST,
        resolution=Resolution.DNS,
        host="dns.example.com",
    ),
)
DNS_ADDRESSES = ("10.0.2.1", "10.0.2.2")


def build() -> tuple[ServiceTable, FakeClock]:
    """A fresh table (the DNS service resolved) and its clock."""
    clock = FakeClock()
    table = ServiceTable(
        Policy(SERVICES),
        Workload(Locality.parse("us-east1")),
        now=clock.now(),
        rng=random.Random(7),
    )
    table.clusters[SERVICES[2].cluster_name].set_endpoint_addresses(0, DNS_ADDRESSES, clock.now())
    return table, clock


def _hosts() -> dict[str, frozenset[str]]:
    table, clock = build()
    return {
        name: frozenset(view.address for view in cluster.hosts(clock.now()))
        for name, cluster in table.clusters.items()
    }


#: Each cluster name -> its hosts (``ip:port``); fixed, nothing here re-resolves.
HOSTS = _hosts()
CLUSTER_NAMES = tuple(HOSTS)
ALL_HOSTS = tuple(sorted(set().union(*HOSTS.values())))
#: Near misses: a wrong port, no port, an unbracketed or re-bracketed IPv6, another case.
FOREIGN_HOSTS = (
    "10.0.0.9:443",
    "10.0.0.1:444",
    "10.0.0.1",
    "2001:db8::1:443",
    "[2001:DB8::1]:443",
    "[2001:db8::1]:80",
    "010.000.000.001:443",
    "10.0.0.1:443:443",
    "db.example.com:443",
    "localhost:443",
    "-",
    ":",
)


def active_requests(table: ServiceTable, now: float) -> dict[str, int]:
    """Every host's active requests, by ``cluster_name host``."""
    return {
        f"{name} {view.address}": view.active_requests
        for name, cluster in table.clusters.items()
        for view in cluster.hosts(now)
    }
