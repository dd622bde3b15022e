"""The compiled policy: immutable values the core runs on.

``extproc.istio`` turns ServiceEntry and DestinationRule objects into these values; every
default here is already resolved (Istio's documented defaults), so the core never looks at
YAML. One ``Service`` is one Envoy cluster in Istio's terms: a ServiceEntry host and port,
``outbound|<port>||<host>``.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from extproc.core.routes import HashKey, HttpRoute
from extproc.errors import Problem

_T = TypeVar("_T")


class LbAlgorithm(enum.Enum):
    """``trafficPolicy.loadBalancer.simple``; Istio's default is LEAST_REQUEST."""

    ROUND_ROBIN = "ROUND_ROBIN"
    LEAST_REQUEST = "LEAST_REQUEST"
    RANDOM = "RANDOM"


class Resolution(enum.Enum):
    """``ServiceEntry.resolution`` values we serve.

    DNS is Envoy's STRICT_DNS (every A record is a host); DNS_ROUND_ROBIN is LOGICAL_DNS (one
    host per endpoint: the first address of each answer); STATIC takes the addresses as they
    are (pilot ``convertResolution``).
    """

    DNS = "DNS"
    DNS_ROUND_ROBIN = "DNS_ROUND_ROBIN"
    STATIC = "STATIC"

    def host_ips(self, ips: Iterable[str]) -> tuple[str, ...]:
        """The hosts one answer gives an endpoint: each address once, in answer order.

        DNS_ROUND_ROBIN keeps only the first (``LogicalDnsCluster`` connects to the first
        address of each answer); this is the one place that rule is written.
        """
        unique = tuple(dict.fromkeys(ips))
        return unique[:1] if self is Resolution.DNS_ROUND_ROBIN else unique


def host_address(host: str, port: int) -> str:
    """``host:port`` with an IPv6 literal in brackets: Envoy's upstream_url form, Go's
    ``net.JoinHostPort`` (what istioctl shows) and RFC 3986's authority."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_ip(address: str) -> bool:
    """True for an IPv4 or IPv6 literal (an endpoint address that needs no DNS)."""
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class Locality:
    """A region/zone/sub_zone triple; missing parts are empty strings."""

    region: str = ""
    zone: str = ""
    sub_zone: str = ""

    @classmethod
    def parse(cls, text: str | None) -> Locality:
        """Split ``region/zone/subzone``; segments past the third are ignored.

        Mirrors Istio's ``SplitLocalityLabel`` (pilot/pkg/serviceregistry/util/label).
        """
        if not text:
            return cls()
        parts = text.split("/")
        parts += [""] * (3 - len(parts))
        return cls(parts[0], parts[1], parts[2])

    def __str__(self) -> str:
        return "/".join(p for p in (self.region, self.zone, self.sub_zone) if p) or "-"


@dataclass(frozen=True, slots=True)
class OutlierDetection:
    """``trafficPolicy.outlierDetection`` with Istio's defaults applied.

    ``always_eject_one_host`` is Envoy's flag of that name: the first ejection of a cluster
    is allowed whatever ``max_ejection_percent`` says (the rule before Envoy 1.28, which the
    seed's two-endpoint DestinationRule relies on). ``False`` is Envoy's current strict rule.

    The gateway detector keeps Envoy's defaults when ``consecutiveGatewayErrors`` is unset,
    as pilot leaves them (``applyOutlierDetection``): threshold 5 with enforcing 0, so it
    detects and logs but never ejects; a DR value v sets threshold v, enforcing 100 if v > 0.
    ``consecutive_local_origin_failures`` only counts with ``split_external_local_origin_errors``
    (Envoy's default 5, enforcing 100). ``http_error_codes`` is
    ``outlierDetectionHttpErrorCodes``; empty means the 5xx rule.
    """

    consecutive_5xx_errors: int = 5
    interval_s: float = 10.0
    base_ejection_time_s: float = 30.0
    max_ejection_percent: int = 10
    min_health_percent: int = 0
    always_eject_one_host: bool = True
    consecutive_gateway_errors: int = 5
    enforcing_consecutive_gateway_failure: int = 0  # percent; Istio emits 0 or 100
    split_external_local_origin_errors: bool = False
    consecutive_local_origin_failures: int = 5
    http_error_codes: frozenset[int] = frozenset()

    @property
    def max_ejection_time_s(self) -> float:
        """Envoy's default ``max_ejection_time``: max(300 s, base_ejection_time)."""
        return max(300.0, self.base_ejection_time_s)


@dataclass(frozen=True, slots=True)
class Failover:
    """One ``localityLbSetting.failover`` entry (regions only)."""

    from_region: str
    to_region: str


@dataclass(frozen=True, slots=True)
class Distribute:
    """One ``localityLbSetting.distribute`` rule.

    ``to`` keeps the YAML order of the map: Istio walks a Go map (random order), which only
    matters when a locality matches two ``to`` patterns, and validation rejects that.
    """

    from_locality: str  # a region/zone/subzone pattern; ``*`` ends it as a wildcard
    to: tuple[tuple[str, int], ...]  # (locality pattern, weight 1..100), weights sum to 100


@dataclass(frozen=True, slots=True)
class LocalityLbSetting:
    """``localityLbSetting``; Istio's mesh default is ``enabled: true``.

    At most one of ``distribute`` and ``failover`` is set (validated); ``failover_priority``
    combines with ``failover`` (Istio's ``applyFailoverPriorities``, then
    ``applyLocalityFailover``).
    """

    enabled: bool = True
    failover: tuple[Failover, ...] = ()
    distribute: tuple[Distribute, ...] = ()
    failover_priority: tuple[str, ...] = ()  # label keys, or ``key=value``


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One ServiceEntry endpoint, with the port already chosen (``ports[name]``,
    else ``targetPort``, else the service port)."""

    address: str  # an IP (STATIC, or DNS with a literal) or a hostname (DNS)
    port: int
    locality: Locality = Locality()
    labels: tuple[tuple[str, str], ...] = ()  # as written; topology labels are added later
    weight: int = 1  # Istio treats 0 as 1
    network: str = ""  # ``endpoints[].network``: Istio's topology.istio.io/network label


class TlsMode(enum.Enum):
    """``tls.mode`` values that originate TLS (DISABLE is no ``TlsSettings`` at all)."""

    SIMPLE = "SIMPLE"
    MUTUAL = "MUTUAL"


class UpstreamSni(enum.Enum):
    """Where the SNI (and the SAN check) of a TLS connection without ``sni`` comes from.

    AUTHORITY is Istio's rule: the request's authority (``auto_sni``). ENDPOINT is extproc's
    opt-in (the ``extproc.io/upstream-sni: endpoint`` annotation): each endpoint's own name
    as SNI and as the Host header, which real endpoints behind a ServiceEntry host expect.
    """

    AUTHORITY = "authority"
    ENDPOINT = "endpoint"


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """``trafficPolicy.tls`` in mode SIMPLE or MUTUAL, as pilot's ``constructUpstreamTLS``
    reads it (``pilot/pkg/networking/core/cluster_tls.go``).

    Empty strings are unset fields: no ``sni`` means SNI from the authority (or the
    endpoint, see ``UpstreamSni``), no ``ca_certificates`` means the system CA bundle.
    """

    mode: TlsMode
    sni: str = ""
    subject_alt_names: tuple[str, ...] = ()  # the DR's, else the ServiceEntry's
    ca_certificates: str = ""  # a PEM file; "" is the system bundle
    client_certificate: str = ""  # MUTUAL only
    private_key: str = ""  # MUTUAL only
    ca_crl: str = ""
    insecure_skip_verify: bool = False
    sni_from: UpstreamSni = UpstreamSni.AUTHORITY

    @property
    def auto_sni(self) -> bool:
        """SNI from the request's authority: Istio sets ``auto_sni`` when ``sni`` is empty
        (``setAutoSniAndAutoSanValidation``)."""
        return not self.sni and self.sni_from is UpstreamSni.AUTHORITY

    @property
    def auto_san_validation(self) -> bool:
        """Check the certificate against the SNI sent: Istio's rule for ``auto_san_validation``
        (no ``sni``, no ``subjectAltNames``, verification on)."""
        return not self.sni and not self.subject_alt_names and not self.insecure_skip_verify


#: Istio's default cluster ID (``pkg/config/constants.DefaultClusterName``): istiod's
#: ``CLUSTER_ID`` (given to ServiceEntry endpoints) and the sidecars' ``ISTIO_META_CLUSTER_ID``.
DEFAULT_CLUSTER_ID = "Kubernetes"


#: Istio's circuit-breaker thresholds when the pool sets none: effectively unlimited
#: (cluster_traffic_policy.go getDefaultCircuitBreakerThresholds, math.MaxUint32).
UNLIMITED = 2**32 - 1


class UpstreamProtocol(enum.Enum):
    """The HTTP version a cluster speaks to its endpoints (``h2UpgradePolicy``,
    ``useClientProtocol``; the mesh's default h2UpgradePolicy is DO_NOT_UPGRADE)."""

    HTTP1 = "HTTP1"
    HTTP2 = "HTTP2"  # h2UpgradePolicy: UPGRADE (applyH2Upgrade, setH2Options)
    CLIENT = "CLIENT"  # useClientProtocol: the downstream's (setUseDownstreamProtocol)


@dataclass(frozen=True, slots=True)
class TcpKeepalive:
    """``connectionPool.tcp.tcpKeepalive``; None keeps the OS default (setKeepAliveSettings)."""

    probes: int | None = None
    time_s: int | None = None  # whole seconds, as pilot passes them (Duration.Seconds)
    interval_s: int | None = None


@dataclass(frozen=True, slots=True)
class ConnectionPool:
    """``trafficPolicy.connectionPool`` as pilot's ``applyConnectionPool`` resolves it.

    The four limits are Envoy circuit breakers, shared by all of Envoy's workers: a request
    over one is answered 503 (UO) by Envoy and never counts against an endpoint.
    """

    # tcp.connectTimeout, else Istio's mesh connectTimeout (10s, applyDefaultConnectionPool).
    connect_timeout_s: float = 10.0
    max_connections: int = UNLIMITED  # tcp.maxConnections
    max_pending_requests: int = UNLIMITED  # http.http1MaxPendingRequests
    max_requests: int = UNLIMITED  # http.http2MaxRequests
    max_retries: int = UNLIMITED  # http.maxRetries (0 is unset: the FIXME in pilot)
    # http.idleTimeout, else tcp.idleTimeout; None is Envoy's default (1h).
    idle_timeout_s: float | None = None
    max_requests_per_connection: int = 0  # 0: unlimited
    max_connection_duration_s: float | None = None
    tcp_keepalive: TcpKeepalive | None = None
    protocol: UpstreamProtocol = UpstreamProtocol.HTTP1
    # HTTP/2 only (an upgraded cluster): http.maxConcurrentStreams, http.http2KeepAlive.
    max_concurrent_streams: int = 0
    http2_keepalive: tuple[float, float] | None = None  # (interval, timeout), seconds


class HashAlgorithm(enum.Enum):
    """``consistentHash``'s Envoy load balancer (``ApplyRingHashLoadBalancer``)."""

    RING_HASH = "RING_HASH"
    MAGLEV = "MAGLEV"


@dataclass(frozen=True, slots=True)
class HashRing:
    """A consistent-hash cluster's balancer: Envoy's ring (or Maglev table) over its hosts.

    ``size`` is ``ringHash.minimumRingSize`` or ``maglev.tableSize``; None leaves Envoy's
    default (pilot sets no lb_config for a zero size, but 1024 for the deprecated field).
    """

    algorithm: HashAlgorithm = HashAlgorithm.RING_HASH
    size: int | None = None


@dataclass(frozen=True, slots=True)
class SlowStart:
    """``warmupDurationSecs`` / ``warmup``: Envoy's slow start (``setSlowStartConfig``,
    ``setWarmup``). None fields are left to Envoy (its aggression 1.0 and floor 10%)."""

    window_s: float
    aggression: float | None = None
    min_weight_percent: float | None = None


@dataclass(frozen=True, slots=True)
class Workload:
    """The client proxy a service answers for: its locality, labels and cluster.

    Istio derives priorities from the proxy's locality (``LbPriority``), its labels
    (``failoverPriority``) and ``distribute`` rules matched against its locality. ``labels``
    are the proxy's own labels as given; the topology labels Istio adds to them
    (``AugmentLabels``: region, zone, subzone, cluster) are derived from ``locality`` and
    ``cluster_id`` when priorities are computed.
    """

    locality: Locality = Locality()
    labels: tuple[tuple[str, str], ...] = ()
    cluster_id: str = DEFAULT_CLUSTER_ID


@dataclass(frozen=True, slots=True)
class Service:
    """A ServiceEntry host on one port, with the DestinationRule that applies to it."""

    host: str
    port: int
    port_name: str
    protocol: str
    resolution: Resolution
    endpoints: tuple[Endpoint, ...]
    lb_algorithm: LbAlgorithm = LbAlgorithm.LEAST_REQUEST
    # consistentHash: Envoy's ring over the hosts, which replaces lb_algorithm.
    hash_ring: HashRing | None = None
    # Slow start, on ROUND_ROBIN and LEAST_REQUEST only (as pilot applies it).
    slow_start: SlowStart | None = None
    # A route's hash key to this cluster, with the destination's port and without one.
    hash_key: HashKey | None = None
    hash_key_portless: HashKey | None = None
    outlier_detection: OutlierDetection | None = None
    locality_lb: LocalityLbSetting = LocalityLbSetting()
    pool: ConnectionPool = ConnectionPool()
    # A DestinationRule subset's name: its own cluster, reached only through a route.
    subset: str = ""
    # A VirtualService's routes for this host and port; empty: Istio's default route.
    routes: tuple[HttpRoute, ...] = ()
    route_source: str = ""  # the VirtualService they came from, for messages
    # trafficPolicy.tls in mode SIMPLE or MUTUAL; None is plain TCP (no tls, or DISABLE).
    tls: TlsSettings | None = None
    source: str = ""  # where it came from, for messages: 'mesh.yaml: ServiceEntry "x"'

    @property
    def cluster_name(self) -> str:
        """Istio's cluster name for this host, subset and port."""
        return cluster_name(self.host, self.port, self.subset)

    @property
    def envoy_balances(self) -> bool:
        """Whether Envoy's own load balancer picks every host, over the service's EDS.

        Envoy's ring hash and Maglev hash the request and pick over priorities and health,
        and its slow start ramps a host by the time Envoy created it; both are only exactly
        Envoy's when Envoy runs them, so the data path sets no override for these clusters
        and the service reaches the balancer through EDS alone (priorities, ejections).
        """
        return self.hash_ring is not None or self.slow_start is not None


@dataclass(frozen=True, slots=True)
class Policy:
    """Everything the service serves, consistent as a whole."""

    services: tuple[Service, ...] = ()
    # What was ignored or looks wrong, each located (file, document, field path).
    warnings: tuple[Problem, ...] = field(default=())
    # (kind, count) of every object the config held, by kind: what was read, for reports
    # (``extproc check``). Not part of what is served, so not compared.
    objects: tuple[tuple[str, int], ...] = field(default=(), compare=False)


def cluster_name(host: str, port: int, subset: str = "") -> str:
    """Istio's cluster name (``model.BuildSubsetKey``): ``outbound|80|v1|mydb.com``, with an
    empty subset for the host's own cluster; ``*.example.com`` stays as written."""
    return f"outbound|{port}|{subset}|{host}"


def authority_key(host: str, port: int | None) -> str:
    """The domain string a request matches with: lower case, no trailing dot, ``:port``."""
    host = host.lower().rstrip(".")
    return host if port is None else f"{host}:{port}"


def route_domains(services: Sequence[Service]) -> list[tuple[Service, tuple[str, ...]]]:
    """Each service's Envoy virtual-host domains, in service order.

    Every service answers ``host:port``; the bare ``host`` (a client on its default port)
    means the host's port-80 service when it has one, else its first (Istio's
    ``generateVirtualHostDomains`` matches with and without the port). A wildcard host
    (``*.example.com``) gives wildcard domains (``*.example.com``, ``*.example.com:80``),
    which Envoy matches by suffix.
    """
    # A subset has no virtual host of its own: only a VirtualService's route reaches it.
    services = [service for service in services if not service.subset]
    default: dict[str, Service] = {}
    for service in services:
        current = default.get(service.host)
        if current is None or (service.port == 80 and current.port != 80):
            default[service.host] = service
    return [
        (
            service,
            (service.host, f"{service.host}:{service.port}")
            if default[service.host] is service
            else (f"{service.host}:{service.port}",),
        )
        for service in services
    ]


class DomainIndex(Generic[_T]):
    """Envoy's virtual-host choice among fixed domains (``RouteMatcher::findVirtualHost``).

    1. An exact domain equal to the key.
    2. Else the longest suffix wildcard (``*.example.com`` is the suffix ``.example.com``)
       that is shorter than the key: ``*.example.com`` never matches ``.example.com``, and
       ``*.b.example.com`` wins over ``*.example.com`` for ``a.b.example.com``.

    Keys are ``authority_key`` strings, so a port is part of the match, as in Envoy
    (``*.example.com:80`` matches ``db.example.com:80``, ``*.example.com`` does not).
    """

    __slots__ = ("_exact", "_lengths", "_suffixes")

    def __init__(self, entries: Iterable[tuple[_T, Iterable[str]]]) -> None:
        self._exact: dict[str, _T] = {}
        self._suffixes: dict[str, _T] = {}
        for value, domains in entries:
            for domain in domains:
                if domain.startswith("*"):
                    self._suffixes.setdefault(domain[1:], value)
                else:
                    self._exact.setdefault(domain, value)
        self._lengths = sorted({len(s) for s in self._suffixes}, reverse=True)

    def find(self, key: str) -> _T | None:
        """The value of the domain ``key`` matches, or None (Envoy's catch-all)."""
        found = self._exact.get(key)
        if found is not None:
            return found
        for length in self._lengths:
            if length < len(key) and (found := self._suffixes.get(key[-length:])) is not None:
                return found
        return None
