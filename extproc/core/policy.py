"""The compiled policy: immutable values the core runs on.

``extproc.istio`` turns ServiceEntry and DestinationRule objects into these values; every
default here is already resolved (Istio's documented defaults), so the core never looks at
YAML. One ``Service`` is one Envoy cluster in Istio's terms: a ServiceEntry host and port,
``outbound|<port>||<host>``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class LbAlgorithm(enum.Enum):
    """``trafficPolicy.loadBalancer.simple``; Istio's default is LEAST_REQUEST."""

    ROUND_ROBIN = "ROUND_ROBIN"
    LEAST_REQUEST = "LEAST_REQUEST"
    RANDOM = "RANDOM"


class Resolution(enum.Enum):
    """``ServiceEntry.resolution`` values we serve."""

    DNS = "DNS"
    STATIC = "STATIC"


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
    """

    consecutive_5xx_errors: int = 5
    interval_s: float = 10.0
    base_ejection_time_s: float = 30.0
    max_ejection_percent: int = 10
    min_health_percent: int = 0
    always_eject_one_host: bool = True

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
class LocalityLbSetting:
    """``localityLbSetting``; Istio's mesh default is ``enabled: true``."""

    enabled: bool = True
    failover: tuple[Failover, ...] = ()


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One ServiceEntry endpoint, with the port already chosen (``ports[name]``,
    else ``targetPort``, else the service port)."""

    address: str  # an IP (STATIC, or DNS with a literal) or a hostname (DNS)
    port: int
    locality: Locality = Locality()
    labels: tuple[tuple[str, str], ...] = ()
    weight: int = 1  # Istio treats 0 as 1


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
    outlier_detection: OutlierDetection | None = None
    locality_lb: LocalityLbSetting = LocalityLbSetting()
    source: str = ""  # where it came from, for messages: 'mesh.yaml: ServiceEntry "x"'

    @property
    def cluster_name(self) -> str:
        """Istio's cluster name for this host and port."""
        return f"outbound|{self.port}||{self.host}"


@dataclass(frozen=True, slots=True)
class Policy:
    """Everything the service serves, consistent as a whole."""

    services: tuple[Service, ...] = ()
    warnings: tuple[str, ...] = field(default=())

    def find(self, host: str, port: int | None) -> Service | None:
        """The service for a request's ``:authority`` host (and port, when given)."""
        host = host.lower().rstrip(".")
        for service in self.services:
            if service.host == host and (port is None or service.port == port):
                return service
        return None
